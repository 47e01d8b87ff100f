"""A vision transformer written by hand in PyTorch, Flax NNX and Keras gets the same automatic
layer: the input norm of its last block. It classifies its class token, so the patches' own
outputs of the last block never reach the score; through the last attention they do.

The network: 4x4 patches of a 16x16 image (a 4x4 grid), a class token, two pre-norm blocks
(attention, MLP), a final norm and a linear head on the class token."""

from __future__ import annotations

import numpy as np
import pytest
from model_kinds import keras_on_tensorflow

import camkit

DIM, PATCH, SIZE = 16, 4, 16
X = np.random.default_rng(7).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)


def _check(explanation, expected_layer):
    assert explanation.layers == (expected_layer,)
    cams = explanation.cams
    assert cams.shape == (2, SIZE, SIZE) and np.isfinite(cams).all()
    assert all(cam.max() == 1 and cam.min() == 0 for cam in cams)  # a map, not a blank


def test_torch():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(DIM)
            self.attention = nn.MultiheadAttention(DIM, 2, batch_first=True)
            self.norm2 = nn.LayerNorm(DIM)
            self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

        def forward(self, x):
            y = self.norm1(x)
            x = x + self.attention(y, y, y, need_weights=False)[0]
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patches = nn.Conv2d(3, DIM, PATCH, stride=PATCH)
            self.cls = nn.Parameter(torch.randn(1, 1, DIM))
            self.blocks = nn.Sequential(Block(), Block())
            self.norm = nn.LayerNorm(DIM)
            self.head = nn.Linear(DIM, 3)

        def forward(self, x):
            tokens = self.patches(x).flatten(2).transpose(1, 2)
            tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)
            return self.head(self.norm(self.blocks(tokens))[:, 0])

    torch.manual_seed(0)
    _check(camkit.explain(ViT().eval(), torch.from_numpy(X)), "blocks.1.norm1")


def test_flax_nnx():
    jax = pytest.importorskip("jax")
    nnx = pytest.importorskip("flax.nnx")
    jnp = jax.numpy

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.norm1 = nnx.LayerNorm(DIM, rngs=rngs)
            self.attention = nnx.MultiHeadAttention(
                num_heads=2, in_features=DIM, decode=False, rngs=rngs
            )
            self.norm2 = nnx.LayerNorm(DIM, rngs=rngs)
            self.fc1 = nnx.Linear(DIM, 2 * DIM, rngs=rngs)
            self.fc2 = nnx.Linear(2 * DIM, DIM, rngs=rngs)

        def __call__(self, x):
            x = x + self.attention(self.norm1(x))
            return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x))))

    class ViT(nnx.Module):
        def __init__(self, rngs):
            self.patches = nnx.Conv(3, DIM, (PATCH, PATCH), strides=PATCH, rngs=rngs)
            self.cls = nnx.Param(jax.random.normal(rngs.params(), (1, 1, DIM)))
            self.blocks = nnx.List([Block(rngs), Block(rngs)])
            self.norm = nnx.LayerNorm(DIM, rngs=rngs)
            self.head = nnx.Linear(DIM, 3, rngs=rngs)

        def __call__(self, x):
            tokens = self.patches(x).reshape(x.shape[0], -1, DIM)
            cls = jnp.broadcast_to(self.cls[...], (x.shape[0], 1, DIM))
            tokens = jnp.concatenate([cls, tokens], axis=1)
            for block in self.blocks:
                tokens = block(tokens)
            return self.head(self.norm(tokens)[:, 0])

    images = X.transpose(0, 2, 3, 1).copy()  # channels-last
    _check(camkit.explain(ViT(nnx.Rngs(0)), images), "blocks.1.norm1")


def test_keras():
    keras = keras_on_tensorflow()
    layers = keras.layers

    class ClassToken(layers.Layer):
        def build(self, input_shape):
            self.token = self.add_weight(shape=(1, 1, DIM), initializer="random_normal")

        def call(self, tokens):
            batch = keras.ops.shape(tokens)[0]
            cls = keras.ops.broadcast_to(self.token, (batch, 1, DIM))
            return keras.ops.concatenate([cls, tokens], axis=1)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(DIM, PATCH, strides=PATCH, name="patches")(inputs)
    x = ClassToken(name="class_token")(layers.Reshape((-1, DIM), name="tokens")(x))
    for i in range(2):
        y = layers.LayerNormalization(name=f"block{i}_norm1")(x)
        x = layers.Add(name=f"block{i}_add1")(
            [x, layers.MultiHeadAttention(2, DIM // 2, name=f"block{i}_attention")(y, y)]
        )
        y = layers.LayerNormalization(name=f"block{i}_norm2")(x)
        y = layers.Dense(2 * DIM, activation="gelu", name=f"block{i}_fc1")(y)
        x = layers.Add(name=f"block{i}_add2")([x, layers.Dense(DIM, name=f"block{i}_fc2")(y)])
    x = layers.LayerNormalization(name="norm")(x)
    outputs = layers.Dense(3, name="head")(x[:, 0])
    model = keras.Model(inputs, outputs)
    _check(camkit.explain(model, X.transpose(0, 2, 3, 1).copy()), "block1_norm1")
