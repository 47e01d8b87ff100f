"""Models with several inputs, on every backend: a tuple (positional) or dict (keyword) of
inputs, extra keyword arguments (``forward_kwargs``), and the image named or found; the
perturbation methods and metrics change the image only, each row taking its own sample's other
inputs along.

Each model is ``head(concat(GAP(ReLU(conv(image))), dense(meta))) * temperature``; the checks
compare it with the same network closed over one sample's ``meta`` (a one-input model)."""

from __future__ import annotations

import numpy as np
import pytest
from model_kinds import keras_on_tensorflow

import camkit

RNG = np.random.default_rng(3)
IMAGES = RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)
META = RNG.normal(size=(2, 5)).astype(np.float32)
RAW = {"relu": False, "normalize": "none", "size": "layer"}


def check(model, image, meta, alone, layer, *, alone_layer=None, dict_model=None,
          kwargs_model=None):  # fmt: skip
    """The checks every backend passes. ``alone(i)`` is the network closed over ``meta[i]``,
    a one-input model of the same backend whose ``layer`` is ``alone_layer``; ``image`` and
    ``meta`` are in the model's layout."""
    alone_layer = alone_layer or layer
    both = camkit.explain(model, (image, meta), "gradcam", layer, target=[0, 2], **RAW)
    assert both.cams.shape[0] == 2
    for i in range(2):
        single = camkit.explain(alone(i), image[i : i + 1], "gradcam", alone_layer,
                                target=[0, 2][i], **RAW)  # fmt: skip
        np.testing.assert_allclose(both.cams[i], single.cams[0], atol=1e-5)
    # the image named by position; a key that is not an input
    named = camkit.explain(model, (image, meta), "gradcam", layer, target=[0, 2], image=0, **RAW)
    np.testing.assert_allclose(named.cams, both.cams, atol=1e-6)
    with pytest.raises(camkit.InputError, match="image=3 is not one of the inputs"):
        camkit.explain(model, (image, meta), layer=layer, image=3)
    # Score-CAM masks the image only, and each masked row keeps its sample's meta
    score = camkit.explain(model, (image, meta), "scorecam", layer, target=[0, 2], batch_size=3)
    for i in range(2):
        single = camkit.explain(alone(i), image[i : i + 1], "scorecam", alone_layer,
                                target=[0, 2][i])  # fmt: skip
        np.testing.assert_allclose(score.cams[i], single.cams[0], atol=1e-5)
    # a metric too
    curves = camkit.metrics.deletion(model, (image, meta), score, target=[0, 2], steps=4)
    for i in range(2):
        single = camkit.metrics.deletion(alone(i), image[i : i + 1], score.cams[i : i + 1],
                                         target=[0, 2][i], steps=4)  # fmt: skip
        np.testing.assert_allclose(curves.scores[i], single.scores[0], atol=1e-5)
    if dict_model is not None:  # keyword inputs, the image found as the array with axes
        by_key = camkit.explain(dict_model, {"meta": meta, "image": image}, "gradcam", layer,
                                target=[0, 2], **RAW)  # fmt: skip
        np.testing.assert_allclose(by_key.cams, both.cams, atol=1e-5)
    if kwargs_model is not None:  # an extra keyword argument scales the scores
        hot = camkit.explain(kwargs_model, (image, meta), "gradcam", layer, target=[0, 2],
                             forward_kwargs={"temperature": 2.0}, **RAW)  # fmt: skip
        np.testing.assert_allclose(hot.scores, 2 * both.scores, rtol=1e-5)
        np.testing.assert_allclose(hot.cams, 2 * both.cams, rtol=1e-4, atol=1e-5)


def test_torch():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.meta = nn.Linear(5, 4)
            self.head = nn.Linear(8, 3)

        def forward(self, image, meta, temperature=1.0):
            pooled = torch.relu(self.conv(image)).mean((2, 3))
            return self.head(torch.cat([pooled, self.meta(meta)], 1)) * temperature

    class Alone(nn.Module):
        def __init__(self, net, meta):
            super().__init__()
            self.net, self.fixed = net, meta

        def forward(self, image):
            return self.net(image, self.fixed.expand(len(image), -1))

    torch.manual_seed(0)
    net = Net().eval()
    image, meta = torch.from_numpy(IMAGES), torch.from_numpy(META)

    def alone(i):
        return Alone(net, meta[i : i + 1]).eval()

    check(net, image, meta, alone, "conv", alone_layer="net.conv", dict_model=net,
          kwargs_model=net)  # fmt: skip
    check(net, IMAGES, META, alone, "conv", alone_layer="net.conv")  # numpy inputs


def test_keras():
    keras = keras_on_tensorflow()
    layers = keras.layers
    keras.utils.set_random_seed(0)
    conv = layers.Conv2D(4, 3, padding="same", name="conv")
    dense, head = layers.Dense(4, name="dense"), layers.Dense(3, name="head")

    def network(image, meta):
        pooled = layers.GlobalAveragePooling2D()(layers.ReLU()(conv(image)))
        return head(layers.Concatenate()([pooled, dense(meta)]))

    image_in, meta_in = keras.Input((8, 8, 3), name="image"), keras.Input((5,), name="meta")
    model = keras.Model([image_in, meta_in], network(image_in, meta_in))
    by_name = keras.Model({"image": image_in, "meta": meta_in}, network(image_in, meta_in))

    class WithTemperature(keras.Model):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, inputs, temperature=1.0, training=False):
            return self.inner(inputs, training=training) * temperature

    hot = WithTemperature(model)
    images = IMAGES.transpose(0, 2, 3, 1).copy()

    def alone(i):
        single = keras.Input((8, 8, 3))
        fixed = keras.ops.convert_to_tensor(META[i : i + 1])
        tiled = layers.Lambda(lambda t: keras.ops.tile(fixed, [keras.ops.shape(t)[0], 1]))(single)
        return keras.Model(single, network(single, tiled))

    check(model, images, META, alone, "conv", dict_model=by_name, kwargs_model=hot)


def test_flax_nnx_and_linen():
    jax = pytest.importorskip("jax")
    nnx = pytest.importorskip("flax.nnx")
    linen = pytest.importorskip("flax.linen")
    jnp = jax.numpy

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
            self.meta = nnx.Linear(5, 4, rngs=rngs)
            self.head = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, image, meta, temperature=1.0):
            pooled = nnx.relu(self.conv(image)).mean((1, 2))
            return self.head(jnp.concatenate([pooled, self.meta(meta)], 1)) * temperature

    class Alone(nnx.Module):
        def __init__(self, net, meta):
            self.net, self.fixed = net, nnx.Variable(meta)

        def __call__(self, image):
            return self.net(image, jnp.broadcast_to(self.fixed[...], (image.shape[0], 5)))

    net = Net(nnx.Rngs(0))
    images = IMAGES.transpose(0, 2, 3, 1).copy()
    check(net, images, META, lambda i: Alone(net, META[i : i + 1]), "conv",
          alone_layer="net.conv", dict_model=net, kwargs_model=net)  # fmt: skip

    class LinenNet(linen.Module):
        @linen.compact
        def __call__(self, image, meta, temperature=1.0):
            pooled = linen.relu(linen.Conv(4, (3, 3), name="conv")(image)).mean((1, 2))
            features = jnp.concatenate([pooled, linen.Dense(4, name="meta")(meta)], 1)
            return linen.Dense(3, name="head")(features) * temperature

    class LinenAlone(linen.Module):
        meta: np.ndarray

        @linen.compact
        def __call__(self, image):
            return LinenNet(name="net")(image, jnp.broadcast_to(self.meta, (image.shape[0], 5)))

    variables = LinenNet().init(jax.random.PRNGKey(0), images, META)
    pair = (LinenNet(), variables)
    nested = {"params": {"net": variables["params"]}}
    check(pair, images, META, lambda i: (LinenAlone(META[i : i + 1]), nested), "conv",
          alone_layer="net.conv", dict_model=pair, kwargs_model=pair)  # fmt: skip


def test_equinox():
    jax = pytest.importorskip("jax")
    eqx = pytest.importorskip("equinox")
    jnp = jax.numpy

    class Net(eqx.Module):  # one sample: image (C, H, W), meta (5,)
        conv: eqx.nn.Conv2d
        meta: eqx.nn.Linear
        head: eqx.nn.Linear

        def __init__(self, key):
            k1, k2, k3 = jax.random.split(key, 3)
            self.conv = eqx.nn.Conv2d(3, 4, 3, padding=1, key=k1)
            self.meta = eqx.nn.Linear(5, 4, key=k2)
            self.head = eqx.nn.Linear(8, 3, key=k3)

        def __call__(self, image, meta, temperature=1.0):
            pooled = jax.nn.relu(self.conv(image)).mean((1, 2))
            return self.head(jnp.concatenate([pooled, self.meta(meta)])) * temperature

    class Alone(eqx.Module):
        net: Net
        fixed: jax.Array

        def __call__(self, image):
            return self.net(image, self.fixed)

    net = Net(jax.random.PRNGKey(0))
    check(net, IMAGES, META, lambda i: Alone(net, jnp.asarray(META[i])), "conv",
          alone_layer="net.conv", dict_model=net, kwargs_model=net)  # fmt: skip


def test_a_list_of_images_is_refused_with_the_fix():
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    with pytest.raises(camkit.InputError, match="a list of 2 items; pass one array .*np.stack"):
        camkit.explain(model, [IMAGES[0], IMAGES[1]])
    with pytest.raises(camkit.InputError, match="none of the 2 inputs is an array with spatial"):
        camkit.explain(model, (META, META))
