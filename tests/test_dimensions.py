"""Signals (one spatial axis) and volumes (three), on every backend.

The same small CNN, ``conv (pad 1) -> ReLU -> conv (stride 2, pad 1) -> ReLU -> global mean ->
linear``, is built with one set of weights in PyTorch, Keras, Flax NNX and Equinox, for 1-D
signals ``(N, C, L)`` and 3-D volumes ``(N, C, D, H, W)`` (channels-last where the framework
is), and every method must give the same maps everywhere; PyTorch's are checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from model_kinds import keras_on_tensorflow

import camkit

METHODS = [
    "gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise", "layercam",
    "eigengradcam", "cam", "eigencam", "scorecam", "ablationcam",
]  # fmt: skip
RAW = {"relu": False, "normalize": "none", "size": "layer"}
SHAPES = {1: (2, 2, 16), 3: (2, 2, 4, 6, 6)}  # (N, C, *S)


def weights(rank: int) -> dict[str, np.ndarray]:
    """PyTorch-layout weights: conv (O, I, *k), linear (O, I)."""
    rng = np.random.default_rng(rank)
    kernel = (3,) * rank
    return {
        "conv1": rng.normal(size=(4, 2, *kernel)).astype(np.float32) * 0.4,
        "bias1": rng.normal(size=4).astype(np.float32) * 0.1,
        "conv2": rng.normal(size=(4, 4, *kernel)).astype(np.float32) * 0.3,
        "bias2": rng.normal(size=4).astype(np.float32) * 0.1,
        "fc": rng.normal(size=(3, 4)).astype(np.float32),
        "fc_bias": rng.normal(size=3).astype(np.float32) * 0.1,
    }


def inputs(rank: int) -> np.ndarray:
    return np.random.default_rng(10 + rank).normal(size=SHAPES[rank]).astype(np.float32)


def channels_last(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def hwio(kernel: np.ndarray) -> np.ndarray:
    """(O, I, *k) -> (*k, I, O), the Keras and Flax kernel layout."""
    return np.ascontiguousarray(np.moveaxis(kernel, (0, 1), (-1, -2)))


def torch_model(rank: int):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    conv = {1: nn.Conv1d, 3: nn.Conv3d}[rank]
    w = weights(rank)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = conv(2, 4, 3, padding=1)
            self.conv2 = conv(4, 4, 3, stride=2, padding=1)
            self.act = nn.ReLU()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            x = self.act(self.conv2(torch.relu(self.conv1(x))))
            return self.fc(x.mean(tuple(range(2, x.ndim))))

    model = Net().eval()
    with torch.no_grad():
        for name, value in (("conv1", "conv1"), ("conv2", "conv2"), ("fc", "fc")):
            getattr(model, name).weight.copy_(torch.from_numpy(w[value]))
        model.conv1.bias.copy_(torch.from_numpy(w["bias1"]))
        model.conv2.bias.copy_(torch.from_numpy(w["bias2"]))
        model.fc.bias.copy_(torch.from_numpy(w["fc_bias"]))
    return model, torch.from_numpy(inputs(rank))


def keras_model(rank: int):
    keras = keras_on_tensorflow()
    layers = keras.layers
    conv = {1: layers.Conv1D, 3: layers.Conv3D}[rank]
    pad = {1: layers.ZeroPadding1D, 3: layers.ZeroPadding3D}[rank]
    pool = {1: layers.GlobalAveragePooling1D, 3: layers.GlobalAveragePooling3D}[rank]
    x = channels_last(inputs(rank))
    model = keras.Sequential([
        keras.Input(x.shape[1:]), pad(1), conv(4, 3, name="conv1"), layers.ReLU(), pad(1),
        conv(4, 3, strides=2, name="conv2"), layers.ReLU(name="act"), pool(),
        layers.Dense(3, name="fc"),
    ])  # fmt: skip
    w = weights(rank)
    model.set_weights([hwio(w["conv1"]), w["bias1"], hwio(w["conv2"]), w["bias2"],
                       w["fc"].T, w["fc_bias"]])  # fmt: skip
    return model, x


def nnx_model(rank: int):
    nnx = pytest.importorskip("flax.nnx")
    pad = ((1, 1),) * rank

    class Act(nnx.Module):
        def __call__(self, x):
            return nnx.relu(x)

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(2, 4, (3,) * rank, padding=pad, rngs=rngs)
            self.conv2 = nnx.Conv(4, 4, (3,) * rank, strides=2, padding=pad, rngs=rngs)
            self.act = Act()
            self.fc = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            x = self.act(self.conv2(nnx.relu(self.conv1(x))))
            return self.fc(x.mean(tuple(range(1, x.ndim - 1))))

    model = Net(nnx.Rngs(0))
    w = weights(rank)
    model.conv1.kernel[...] = hwio(w["conv1"])
    model.conv1.bias[...] = w["bias1"]
    model.conv2.kernel[...] = hwio(w["conv2"])
    model.conv2.bias[...] = w["bias2"]
    model.fc.kernel[...] = w["fc"].T
    model.fc.bias[...] = w["fc_bias"]
    return model, channels_last(inputs(rank))


def equinox_model(rank: int):
    jax = pytest.importorskip("jax")
    eqx = pytest.importorskip("equinox")
    jnp = jax.numpy
    conv = {1: eqx.nn.Conv1d, 3: eqx.nn.Conv3d}[rank]
    w = weights(rank)
    lift = (slice(None),) + (None,) * rank  # bias (O,) -> (O, 1, ...)

    class Act(eqx.Module):
        def __call__(self, x):
            return jax.nn.relu(x)

    class Net(eqx.Module):
        conv1: eqx.Module
        conv2: eqx.Module
        act: Act
        fc: eqx.nn.Linear

        def __init__(self, key):
            k1, k2, k3 = jax.random.split(key, 3)
            self.conv1 = conv(2, 4, 3, padding=1, key=k1)
            self.conv2 = conv(4, 4, 3, stride=2, padding=1, key=k2)
            self.act = Act()
            self.fc = eqx.nn.Linear(4, 3, key=k3)

        def __call__(self, x):  # one sample (C, *S)
            x = self.act(self.conv2(jax.nn.relu(self.conv1(x))))
            return self.fc(x.mean(tuple(range(1, x.ndim))))

    model = Net(jax.random.PRNGKey(0))
    for path, value in (
        (lambda m: m.conv1.weight, w["conv1"]), (lambda m: m.conv1.bias, w["bias1"][lift]),
        (lambda m: m.conv2.weight, w["conv2"]), (lambda m: m.conv2.bias, w["bias2"][lift]),
        (lambda m: m.fc.weight, w["fc"]), (lambda m: m.fc.bias, w["fc_bias"]),
    ):  # fmt: skip
        model = eqx.tree_at(path, model, jnp.asarray(value))
    return model, inputs(rank)


BUILDERS = {"keras": keras_model, "nnx": nnx_model, "equinox": equinox_model}


@pytest.mark.parametrize("rank", [1, 3])
def test_pytorch_by_hand(rank):
    """Grad-CAM on conv2 written out by hand, and CAM = Grad-CAM x positions (GAP + linear)."""
    torch = pytest.importorskip("torch")
    model, x = torch_model(rank)
    store = {}
    handle = model.conv2.register_forward_hook(lambda m, a, out: store.update(a=out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    a = store["a"]
    a.retain_grad()
    logits[torch.arange(2), [0, 2]].sum().backward()
    axes = tuple(range(2, a.ndim))
    expected = (a.grad.mean(axes, keepdim=True) * a).sum(1).detach().numpy()
    got = camkit.explain(model, x, "gradcam", "conv2", target=[0, 2], **RAW)
    assert got.cams.shape == expected.shape == (2, *a.shape[2:])
    np.testing.assert_allclose(got.cams, expected, atol=1e-5)
    cam = camkit.explain(model, x, "cam", "act", target=[0, 2], **RAW).cams
    gradcam = camkit.explain(model, x, "gradcam", "act", target=[0, 2], **RAW).cams
    np.testing.assert_allclose(gradcam * np.prod(a.shape[2:]), cam, rtol=1e-4, atol=1e-5)
    at_input = camkit.explain(model, x, "gradcam", "conv2", target=[0, 2])
    assert at_input.cams.shape == (2, *x.shape[2:])  # resized linearly to the inputs
    assert camkit.explain(model, x).layers == ("act",)


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("framework", list(BUILDERS))
@pytest.mark.parametrize("method", METHODS)
def test_same_maps_as_pytorch(rank, framework, method):
    torch_net, torch_x = torch_model(rank)
    model, x = BUILDERS[framework](rank)
    layer = "act" if method == "cam" else "conv2"
    expected = camkit.explain(torch_net, torch_x, method, layer, target=[0, 2])
    got = camkit.explain(model, x, method, layer, target=[0, 2])
    assert got.cams.shape == expected.cams.shape == (2, *SHAPES[rank][2:])
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4)
    assert np.abs(got.cams - expected.cams).max() <= 1e-4


@pytest.mark.parametrize("rank", [1, 3])
def test_metrics_on_signals_and_volumes(rank):
    model, x = torch_model(rank)
    maps = camkit.explain(model, x, "gradcam", "conv2", target=[0, 2]).cams
    curves = camkit.metrics.deletion(model, x, maps, target=[0, 2], steps=4)
    assert curves.scores.shape == (2, 5) and np.isfinite(curves.auc).all()
    jax_model, jax_x = nnx_model(rank)
    same = camkit.metrics.deletion(jax_model, jax_x, maps, target=[0, 2], steps=4)
    np.testing.assert_allclose(same.scores, curves.scores, atol=1e-5)
