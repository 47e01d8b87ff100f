"""One small CNN built with the same weights in PyTorch, Keras and Flax NNX: the factories a
cross-framework study (``camkit.run_study``) imports, in its own process or in the tests'.

The network is test_torch.SmallCNN (conv 3->6, ReLU, strided conv 6->8, ReLU, global average
pooling, linear 8->5), with torch's symmetric padding written out for Keras and Flax.
"""

from __future__ import annotations

import numpy as np

_RNG = np.random.default_rng(21)
#: Kernels HWIO and dense weights (in, out), as Keras and Flax store them.
WEIGHTS = [
    _RNG.normal(scale=0.4, size=(3, 3, 3, 6)).astype(np.float32),
    _RNG.normal(scale=0.1, size=(6,)).astype(np.float32),
    _RNG.normal(scale=0.3, size=(3, 3, 6, 8)).astype(np.float32),
    _RNG.normal(scale=0.1, size=(8,)).astype(np.float32),
    _RNG.normal(scale=0.5, size=(8, 5)).astype(np.float32),
    _RNG.normal(scale=0.1, size=(5,)).astype(np.float32),
]
#: Two 12x12 RGB images, channels-last.
IMAGES = _RNG.normal(size=(2, 12, 12, 3)).astype(np.float32)


def torch_cnn():
    import torch
    from test_torch import SmallCNN

    model = SmallCNN(inplace=False).eval()
    k1, b1, k2, b2, w, b = (torch.from_numpy(np.ascontiguousarray(a)) for a in WEIGHTS)
    with torch.no_grad():
        model.conv1.weight.copy_(k1.permute(3, 2, 0, 1))
        model.conv1.bias.copy_(b1)
        model.conv2.weight.copy_(k2.permute(3, 2, 0, 1))
        model.conv2.bias.copy_(b2)
        model.fc.weight.copy_(w.T)
        model.fc.bias.copy_(b)
    return model, torch.from_numpy(np.ascontiguousarray(IMAGES.transpose(0, 3, 1, 2)))


def keras_cnn():
    import keras

    model = keras.Sequential([
        keras.Input((12, 12, 3)),
        keras.layers.ZeroPadding2D(1, name="pad1"),
        keras.layers.Conv2D(6, 3, name="conv1"),
        keras.layers.ReLU(name="relu1"),
        keras.layers.ZeroPadding2D(1, name="pad2"),
        keras.layers.Conv2D(8, 3, strides=2, name="conv2"),
        keras.layers.ReLU(name="relu2"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(5, name="fc"),
    ])  # fmt: skip
    model.set_weights(WEIGHTS)
    return model, IMAGES


def nnx_cnn():
    import jax.numpy as jnp
    from flax import nnx

    pad = ((1, 1), (1, 1))

    class NnxCNN(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(3, 6, (3, 3), padding=pad, rngs=rngs)
            self.conv2 = nnx.Conv(6, 8, (3, 3), strides=2, padding=pad, rngs=rngs)
            self.fc = nnx.Linear(8, 5, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
            return self.fc(x.mean((1, 2)))

    model = NnxCNN(nnx.Rngs(0))
    for layer, (kernel, bias) in zip(
        (model.conv1, model.conv2, model.fc),
        zip(WEIGHTS[::2], WEIGHTS[1::2], strict=True),
        strict=True,
    ):
        layer.kernel[...] = jnp.asarray(kernel)
        layer.bias[...] = jnp.asarray(bias)
    return model, IMAGES
