"""The JAX backend: parity with PyTorch (NNX, Linen), hand values (function split), tracing."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy
nnx = pytest.importorskip("flax.nnx")
linen = pytest.importorskip("flax.linen")

from target_checks import PERTURBATION_METHODS, check_class_targets  # noqa: E402

import camkit  # noqa: E402
import camkit_jax  # noqa: E402
from camkit import targets  # noqa: E402
from camkit_jax import _provider  # noqa: E402

RAW = {"relu": False, "normalize": "none", "size": "layer"}
GRADIENT_METHODS = [
    "gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise", "layercam",
    "eigengradcam",
]  # fmt: skip
X = np.random.default_rng(5).normal(size=(3, 12, 12, 3)).astype(np.float32)
PAD = ((1, 1), (1, 1))  # torch's padding=1, also for the strided convolution


class NnxCNN(nnx.Module):
    """test_torch.SmallCNN in Flax NNX."""

    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 6, (3, 3), padding=PAD, rngs=rngs)
        self.conv2 = nnx.Conv(6, 8, (3, 3), strides=2, padding=PAD, rngs=rngs)
        self.fc = nnx.Linear(8, 5, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        return self.fc(x.mean((1, 2)))


class LinenCNN(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.relu(linen.Conv(6, (3, 3), padding=PAD, name="conv1")(x))
        x = linen.relu(linen.Conv(8, (3, 3), strides=2, padding=PAD, name="conv2")(x))
        return linen.Dense(5, name="fc")(x.mean((1, 2)))


@pytest.fixture(scope="module")
def nnx_model():
    return NnxCNN(nnx.Rngs(0))


@pytest.fixture(scope="module")
def linen_model(nnx_model):
    params = {
        name: {"kernel": np.asarray(getattr(nnx_model, name).kernel[...]),
               "bias": np.asarray(getattr(nnx_model, name).bias[...])}
        for name in ("conv1", "conv2", "fc")
    }  # fmt: skip
    return LinenCNN(), {"params": params}


@pytest.fixture(scope="module")
def torch_twin(nnx_model):
    torch = pytest.importorskip("torch")
    from test_torch import SmallCNN

    model = SmallCNN(inplace=False).eval()
    with torch.no_grad():
        for name in ("conv1", "conv2"):
            layer = getattr(nnx_model, name)
            kernel = np.array(layer.kernel[...]).transpose(3, 2, 0, 1)
            getattr(model, name).weight.copy_(torch.from_numpy(kernel.copy()))
            getattr(model, name).bias.copy_(torch.from_numpy(np.array(layer.bias[...])))
        model.fc.weight.copy_(torch.from_numpy(np.array(nnx_model.fc.kernel[...]).T.copy()))
        model.fc.bias.copy_(torch.from_numpy(np.array(nnx_model.fc.bias[...])))
    return model


@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_same_maps_as_pytorch(nnx_model, linen_model, torch_twin, method, layer):
    import torch

    target = [0, 3, 1]
    images = torch.from_numpy(X.transpose(0, 3, 1, 2).copy())
    expected = camkit.explain(torch_twin, images, method, layer, target=target)
    for model in (nnx_model, linen_model):
        got = camkit.explain(model, X, method, layer, target=target)
        assert got.backend == "jax"
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4)
        assert np.abs(got.cams - expected.cams).max() <= 1e-4


def test_function_split_hand_values():
    # features: the input itself (2 channels, 2x2); head: global average pooling + linear W
    weights = jnp.asarray([[1.0, -1.0], [0.5, 2.0]])

    def features(params, x):
        return x

    def head(params, a):
        return a.mean((1, 2)) @ params.T

    split = camkit_jax.FunctionSplit(features, head, weights)
    a = np.zeros((1, 2, 2, 2), np.float32)
    a[0, :, :, 0] = [[1, 2], [3, 4]]
    a[0, :, :, 1] = [[1, 1], [1, -2]]
    # Grad-CAM for class 1: dS/dA_c = W[1, c] / 4, so M = 0.125 * A0 + 0.5 * A1
    #   = [[0.125, 0.25], [0.375, 0.5]] + [[0.5, 0.5], [0.5, -1]]
    got = camkit.explain(split, a, "gradcam", target=1, **RAW)
    np.testing.assert_allclose(got.cams[0], [[0.625, 0.75], [0.875, -0.5]], atol=1e-6)
    assert got.layers == ("features",)
    # HiResCAM: sum_c G_c * A_c, the same map here since G is constant per channel
    hires = camkit.explain(split, a, "hirescam", target=1, **RAW).cams[0]
    np.testing.assert_allclose(hires, [[0.625, 0.75], [0.875, -0.5]], atol=1e-6)
    # the score is the class-1 logit: mean(A0) * 0.5 + mean(A1) * 2 = 1.25 + 0.5
    np.testing.assert_allclose(got.scores, [1.75], atol=1e-6)


def test_linen_wrapper_with_apply_kwargs(linen_model):
    class WithTrainFlag(LinenCNN):
        @linen.compact
        def __call__(self, x, train: bool = True):
            assert not train
            return super().__call__(x)

    variables = linen_model[1]
    wrapped = camkit_jax.Linen(WithTrainFlag(), variables, {"train": False})
    expected = camkit.explain(linen_model, X, "gradcam", "conv2").cams
    np.testing.assert_allclose(camkit.explain(wrapped, X, "gradcam", "conv2").cams, expected)


def test_automatic_layer(nnx_model, linen_model):
    assert camkit.explain(nnx_model, X).layers == ("conv2",)
    assert camkit.explain(linen_model, X).layers == ("conv2",)


def test_compiled_once_and_reused_across_calls_and_objects(nnx_model):
    method = camkit.GradCAMPlusPlus(nnx_model, "conv1")
    first = method(X, target=[1, 2, 3])
    second = method(X, target=[4, 0, 2])  # new indices are inputs, not constants
    assert method.provider.traces == 1
    assert second.targets.tolist() == [4, 0, 2] and first.targets.tolist() == [1, 2, 3]
    before = _provider.trace_count()
    camkit.explain(nnx_model, X, "gradcam++", "conv1", target=3)  # a new object, same pipeline
    assert _provider.trace_count() == before


def test_targets(nnx_model):
    check_class_targets(nnx_model, X, np.asarray(nnx_model(jnp.asarray(X))), "conv2")


class Relu(nnx.Module):
    def __call__(self, x):
        return nnx.relu(x)


class NnxGapCNN(NnxCNN):
    """The ReLU before pooling as a module, so that CAM can explain what the classifier pools."""

    def __init__(self, rngs):
        super().__init__(rngs)
        self.act = Relu()

    def __call__(self, x):
        x = self.act(self.conv2(nnx.relu(self.conv1(x))))
        return self.fc(x.mean((1, 2)))


def test_cam_equals_gradcam_up_to_a_per_image_scale():
    model = NnxGapCNN(nnx.Rngs(1))
    cam = camkit.explain(model, X, "cam", "act", **RAW).cams
    gradcam = camkit.explain(model, X, "gradcam", "act", **RAW).cams
    np.testing.assert_allclose(gradcam * 36, cam, rtol=1e-4, atol=1e-5)  # 6x6 layer


def test_model_left_as_found(nnx_model):
    state_before = jax.tree.map(np.asarray, nnx.state(nnx_model))
    classes = {path: type(m) for path, m in nnx.iter_modules(nnx_model)}
    for method in camkit.methods():
        camkit.explain(nnx_model, X, method, None if method == "guided-backprop" else "conv2")
    assert {path: type(m) for path, m in nnx.iter_modules(nnx_model)} == classes
    state_after = jax.tree.map(np.asarray, nnx.state(nnx_model))
    jax.tree.map(np.testing.assert_array_equal, state_before, state_after)


def test_errors(nnx_model):
    with pytest.raises(camkit.LayerError, match="closest valid names.*'conv2'"):
        camkit.explain(nnx_model, X, layer="conv3")
    with pytest.raises(camkit.ModelError, match=r"one image rather than .* inputs\[None\]"):
        camkit.explain(nnx_model, X[0])
    with pytest.raises(camkit.InputError, match="floating-point"):
        camkit.explain(nnx_model, X.astype(np.int32))
    with pytest.raises(camkit.ModelError, match="failed on inputs of shape"):
        camkit.explain(nnx_model, np.zeros((1, 12, 12, 5), np.float32))


# -- Equinox ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def equinox_model(nnx_model):
    """The same network in Equinox: one image (C, H, W) at a time, vmapped by camkit."""
    eqx = pytest.importorskip("equinox")

    class EqxCNN(eqx.Module):
        conv1: eqx.nn.Conv2d
        conv2: eqx.nn.Conv2d
        fc: eqx.nn.Linear

        def __init__(self, key):
            k1, k2, k3 = jax.random.split(key, 3)
            self.conv1 = eqx.nn.Conv2d(3, 6, 3, padding=1, key=k1)
            self.conv2 = eqx.nn.Conv2d(6, 8, 3, stride=2, padding=1, key=k2)
            self.fc = eqx.nn.Linear(8, 5, key=k3)

        def __call__(self, x):
            x = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
            return self.fc(x.mean((1, 2)))

    model = EqxCNN(jax.random.PRNGKey(0))
    for name in ("conv1", "conv2"):  # HWIO -> OIHW, bias (O,) -> (O, 1, 1)
        layer = getattr(nnx_model, name)
        kernel = jnp.transpose(jnp.asarray(layer.kernel[...]), (3, 2, 0, 1))
        model = eqx.tree_at(lambda m, n=name: getattr(m, n).weight, model, kernel)
        bias = jnp.asarray(layer.bias[...])[:, None, None]
        model = eqx.tree_at(lambda m, n=name: getattr(m, n).bias, model, bias)
    model = eqx.tree_at(lambda m: m.fc.weight, model, jnp.asarray(nnx_model.fc.kernel[...]).T)
    return eqx.tree_at(lambda m: m.fc.bias, model, jnp.asarray(nnx_model.fc.bias[...]))


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_equinox_gives_the_same_maps_as_flax(nnx_model, equinox_model, method):
    channels_first = X.transpose(0, 3, 1, 2).copy()
    expected = camkit.explain(nnx_model, X, method, "conv2", target=[0, 3, 1])
    got = camkit.explain(equinox_model, channels_first, method, "conv2", target=[0, 3, 1])
    assert got.backend == "jax" and got.cams.shape == (3, 12, 12)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4)
    assert np.abs(got.cams - expected.cams).max() <= 1e-4


def test_equinox_automatic_layer_and_cam(equinox_model):
    channels_first = X.transpose(0, 3, 1, 2).copy()
    assert camkit.explain(equinox_model, channels_first).layers == ("conv2",)
    assert camkit.explain(equinox_model, channels_first, "cam").cams.shape == (3, 12, 12)


def test_compiled_cache_keeps_no_model_alive():
    import gc
    import weakref

    model = NnxCNN(nnx.Rngs(3))
    camkit.explain(model, X, "gradcam", "conv2")
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_regression_and_segmentation_targets():
    class Regressor(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
            self.out = nnx.Linear(4, 1, rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.conv(x)).mean((1, 2)))

    class Segmenter(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)  # "SAME" padding: 12x12 stays
            self.head = nnx.Conv(4, 3, (1, 1), rngs=rngs)

        def __call__(self, x):
            return self.head(nnx.relu(self.conv(x)))

    regressor = Regressor(nnx.Rngs(0))
    got = camkit.explain(regressor, X, layer="conv", target=targets.RegressionTarget(0))
    np.testing.assert_allclose(got.scores, np.asarray(regressor(jnp.asarray(X)))[:, 0], atol=1e-5)

    segmenter = Segmenter(nnx.Rngs(0))
    mask = np.zeros((12, 12), np.float32)
    mask[2:6, 3:9] = 1
    got = camkit.explain(segmenter, X, layer="conv", target=targets.SegmentationTarget(2, mask))
    expected = (np.asarray(segmenter(jnp.asarray(X)))[..., 2] * mask).sum((1, 2))
    np.testing.assert_allclose(got.scores, expected, rtol=1e-5)
    assert got.targets.tolist() == [2, 2, 2]
    with pytest.raises(camkit.TargetError, match="class_index=5 is out of range"):
        camkit.explain(segmenter, X, layer="conv", target=targets.SegmentationTarget(5))


def test_linen_cam_reads_the_last_dense_kernel(nnx_model, linen_model):
    expected = camkit.explain(nnx_model, X, "cam", "conv2", **RAW).cams
    got = camkit.explain(linen_model, X, "cam", "conv2", **RAW).cams
    np.testing.assert_allclose(got, expected, atol=1e-5)


# -- the perturbation family and metrics -----------------------------------------------------


@pytest.mark.parametrize(("method", "options"), PERTURBATION_METHODS)
def test_perturbation_methods_same_maps_as_pytorch(
    nnx_model, linen_model, equinox_model, torch_twin, method, options
):
    import torch

    channels_first = X.transpose(0, 3, 1, 2).copy()
    for layer in ("conv1", "conv2"):
        expected = camkit.explain(torch_twin, torch.from_numpy(channels_first), method, layer,
                                  target=[0, 3, 1], **options)  # fmt: skip
        for model, images in ((nnx_model, X), (linen_model, X), (equinox_model, channels_first)):
            got = camkit.explain(model, images, method, layer, target=[0, 3, 1], **options)
            assert np.abs(got.cams - expected.cams).max() <= 1e-4, (method, layer, model)


def test_metrics_same_as_pytorch(nnx_model, equinox_model, torch_twin):
    import torch

    channels_first = X.transpose(0, 3, 1, 2).copy()
    images = torch.from_numpy(channels_first)
    maps = camkit.explain(torch_twin, images, "gradcam", "conv2").cams
    for metric in (camkit.metrics.deletion, camkit.metrics.insertion):
        expected = metric(torch_twin, images, maps, steps=6, batch_size=5)
        for model, inputs in ((nnx_model, X), (equinox_model, channels_first)):
            got = metric(model, inputs, maps, steps=6, batch_size=5)
            np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)


def test_ablation_on_a_function_split_runs_the_head_only():
    # head: GAP + W; class 0 score = mean(A0) - mean(A1) = 2.5 - 0.25 = 2.25;
    # zeroing A0 leaves -0.25, zeroing A1 leaves 2.5: w = (2.25 + 0.25) / 2.25, -0.25 / 2.25
    weights = jnp.asarray([[1.0, -1.0], [0.5, 2.0]])
    split = camkit_jax.FunctionSplit(lambda p, x: x, lambda p, a: a.mean((1, 2)) @ p.T, weights)
    a = np.zeros((1, 2, 2, 2), np.float32)
    a[0, :, :, 0] = [[1, 2], [3, 4]]
    a[0, :, :, 1] = [[1, 1], [1, -2]]
    got = camkit.explain(split, a, "ablationcam", target=0, **RAW).cams[0]
    expected = 2.5 / 2.25 * a[0, :, :, 0] - 0.25 / 2.25 * a[0, :, :, 1]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_masked_passes_compile_once_per_batch_shape(nnx_model):
    first = camkit.ScoreCAM(nnx_model, "conv2", batch_size=4)
    first(X, target=[0, 3, 1])
    traces = _provider.trace_count()
    camkit.ScoreCAM(nnx_model, "conv2", batch_size=4)(X, target=[4, 4, 2])  # new classes
    assert _provider.trace_count() == traces


def test_bfloat16_masked_passes_agree_with_float32(nnx_model):
    full = camkit.explain(nnx_model, X, "scorecam", "conv2", target=[0, 3, 1])
    half = camkit.explain(nnx_model, X, "scorecam", "conv2", target=[0, 3, 1],
                          precision="bfloat16")  # fmt: skip
    for a, b in zip(full.cams, half.cams, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_equinox_with_float64_parameters_under_x64():
    """Under ``jax_enable_x64`` a float64 model gets its inputs in float64 (before, the float32
    inputs failed the model's convolution and the error blamed the inputs)."""
    eqx = pytest.importorskip("equinox")
    with jax.enable_x64(True):

        class Net(eqx.Module):
            conv: eqx.nn.Conv2d
            fc: eqx.nn.Linear

            def __init__(self, dtype):
                k1, k2 = jax.random.split(jax.random.PRNGKey(0))
                self.conv = eqx.nn.Conv2d(3, 4, 3, padding=1, key=k1, dtype=dtype)
                self.fc = eqx.nn.Linear(4, 2, key=k2, dtype=dtype)

            def __call__(self, x):
                return self.fc(jax.nn.relu(self.conv(x)).mean((1, 2)))

        wide = Net(jnp.float64)
        narrow = jax.tree_util.tree_map(
            lambda leaf: leaf.astype(jnp.float32) if eqx.is_array(leaf) else leaf, wide
        )
        images = X.transpose(0, 3, 1, 2).astype(np.float64)
        got = camkit.explain(wide, images, layer="conv", target=1)
        expected = camkit.explain(narrow, images.astype(np.float32), layer="conv", target=1)
    assert got.cams.dtype == np.float32
    np.testing.assert_allclose(got.cams, expected.cams, atol=1e-4)


def test_compiled_functions_are_bounded_and_keep_no_function_pair_alive():
    """Compiled functions are kept per model structure, at most 32, with their trace counts:
    function pairs explained once each are dropped in turn, and nothing keeps them alive
    (before, a global trace counter held every function pair forever)."""
    import gc
    import weakref

    from camkit_jax import _cache

    def pair(scale):
        def features(params, x):
            return x * scale

        def head(params, a):
            return a.mean((1, 2)) @ params

        return camkit_jax.FunctionSplit(features, head, jnp.eye(3))

    references = []
    for scale in range(40):
        split = pair(float(scale + 1))
        camkit.explain(split, X[:1], target=0)
        references.append(weakref.ref(split.features))
        del split
    gc.collect()
    assert len(_cache._COMPILED) <= 32
    assert sum(reference() is not None for reference in references) <= 32
    assert references[0]() is None  # the least recently used, dropped
