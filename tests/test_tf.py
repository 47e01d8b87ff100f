"""The TensorFlow/Keras backend: parity with PyTorch, model kinds, tracing, targets, hygiene."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "tensorflow":
    pytest.skip("Keras runs on another backend here", allow_module_level=True)

from target_checks import PERTURBATION_METHODS, check_class_targets  # noqa: E402

import camkit  # noqa: E402
from camkit import targets  # noqa: E402

RAW = {"relu": False, "normalize": "none", "size": "layer"}
GRADIENT_METHODS = [
    "gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise", "layercam",
    "eigengradcam",
]  # fmt: skip
rng = np.random.default_rng(3)
X = rng.normal(size=(3, 12, 12, 3)).astype(np.float32)  # channels-last


def layers_of_small_cnn(classes=5, final_activation=None):
    """The PyTorch SmallCNN of test_torch.py, in Keras: explicit padding matches torch's."""
    return [
        keras.layers.ZeroPadding2D(1, name="pad1"),
        keras.layers.Conv2D(6, 3, name="conv1"),
        keras.layers.ReLU(name="relu1"),
        keras.layers.ZeroPadding2D(1, name="pad2"),
        keras.layers.Conv2D(8, 3, strides=2, name="conv2"),
        keras.layers.ReLU(name="relu2"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(classes, activation=final_activation, name="fc"),
    ]


def sequential(weights=None, **kwargs):
    model = keras.Sequential([keras.Input((12, 12, 3)), *layers_of_small_cnn(**kwargs)])
    if weights is not None:
        model.set_weights(weights)
    return model


def nested(weights):
    """The same network with its convolutional part as a nested 'backbone' model."""
    conv_part = layers_of_small_cnn()[:6]
    backbone = keras.Sequential([keras.Input((12, 12, 3)), *conv_part], name="backbone")
    inputs = keras.Input((12, 12, 3))
    features = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(5, name="fc")(features))
    model.set_weights(weights)
    return model


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.blocks = layers_of_small_cnn()

    def call(self, x):
        for layer in self.blocks:
            x = layer(x)
        return x


def subclassed(weights):
    model = Subclassed()
    model(X[:1])
    model.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def weights():
    return sequential().get_weights()


# -- parity with PyTorch -------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_twin(weights):
    """test_torch.SmallCNN with the Keras weights (kernels HWIO -> OIHW, dense IO -> OI)."""
    torch = pytest.importorskip("torch")
    from test_torch import SmallCNN

    model = SmallCNN(inplace=False).eval()
    k1, b1, k2, b2, w, b = weights
    with torch.no_grad():
        model.conv1.weight.copy_(torch.from_numpy(k1.transpose(3, 2, 0, 1)))
        model.conv1.bias.copy_(torch.from_numpy(b1))
        model.conv2.weight.copy_(torch.from_numpy(k2.transpose(3, 2, 0, 1)))
        model.conv2.bias.copy_(torch.from_numpy(b2))
        model.fc.weight.copy_(torch.from_numpy(w.T))
        model.fc.bias.copy_(torch.from_numpy(b))
    return model


@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("layer", ["conv2", "relu1"])
def test_same_maps_as_pytorch(weights, torch_twin, method, layer):
    import torch

    target = [0, 3, 1]
    expected = camkit.explain(
        torch_twin, torch.from_numpy(X.transpose(0, 3, 1, 2).copy()), method, layer, target=target
    )
    got = camkit.explain(sequential(weights), X, method, layer, target=target)
    assert got.backend == "tf" and expected.backend == "torch"
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4)
    assert np.abs(got.cams - expected.cams).max() <= 1e-4


# -- model kinds and layer names -----------------------------------------------------------


def test_sequential_nested_and_subclassed_give_the_same_maps(weights):
    reference = camkit.explain(sequential(weights), X, "gradcam", "conv2", **RAW).cams
    nested_model = nested(weights)
    for layer in ("backbone/conv2", "conv2", nested_model.get_layer("backbone").get_layer("conv2")):
        got = camkit.explain(nested_model, X, "gradcam", layer, **RAW)
        assert got.layers == ("backbone/conv2",)
        np.testing.assert_allclose(got.cams, reference, atol=1e-5)
    got = camkit.explain(subclassed(weights), X, "gradcam", "conv2", **RAW).cams
    np.testing.assert_allclose(got, reference, atol=1e-5)


def test_tf_keras_two_gives_the_same_maps(weights):
    tf_keras = pytest.importorskip("tf_keras")
    layers = tf_keras.layers
    model = tf_keras.Sequential(
        [layers.ZeroPadding2D(1, input_shape=(12, 12, 3)), layers.Conv2D(6, 3), layers.ReLU(),
         layers.ZeroPadding2D(1), layers.Conv2D(8, 3, strides=2, name="conv2"), layers.ReLU(),
         layers.GlobalAveragePooling2D(), layers.Dense(5, activation="softmax")]
    )  # fmt: skip
    model.set_weights(weights)
    expected = camkit.explain(sequential(weights), X, "gradcam", "conv2")
    got = camkit.explain(model, X, "gradcam", "conv2")
    assert got.backend == "tf"
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)  # logits, not softmax
    np.testing.assert_allclose(got.cams, expected.cams, atol=1e-5)


def test_automatic_layer(weights):
    assert camkit.explain(sequential(weights), X).layers == ("relu2",)
    assert camkit.explain(nested(weights), X).layers == ("backbone",)
    assert camkit.explain(subclassed(weights), X).layers == ("relu2",)


def test_cam_matches_gradcam_on_gap_linear(weights):
    model = sequential(weights)
    cam = camkit.explain(model, X, "cam", "relu2", **RAW).cams
    gradcam = camkit.explain(model, X, "gradcam", "relu2", **RAW).cams
    np.testing.assert_allclose(gradcam * 36, cam, rtol=1e-4, atol=1e-5)  # 6x6 layer


def test_capture_is_compiled_once_per_shape(weights):
    method = camkit.LayerCAM(sequential(weights), "conv2")
    first = method(X, target=[1, 2, 3])
    second = method(X, target=[4, 0, 2])  # new indices are inputs, not constants
    assert method.provider.traces == 1
    assert first.targets.tolist() == [1, 2, 3] and second.targets.tolist() == [4, 0, 2]
    method(X[:2], target=1)
    assert method.provider.traces <= 2


# -- targets -------------------------------------------------------------------------------


def test_targets(weights):
    model = sequential(weights)
    check_class_targets(model, X, model(X).numpy(), "conv2")
    with pytest.raises(camkit.TargetError, match="2 indices for a batch of 3"):
        camkit.explain(model, X, layer="conv2", target=[1, 2])


def test_regression_and_segmentation_targets():
    regressor = keras.Sequential(
        [keras.Input((12, 12, 3)), keras.layers.Conv2D(4, 3, name="conv"),
         keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)]
    )  # fmt: skip
    got = camkit.explain(regressor, X, layer="conv", target=targets.RegressionTarget(0))
    np.testing.assert_allclose(got.scores, regressor(X).numpy()[:, 0], atol=1e-5)
    segmenter = keras.Sequential(
        [keras.Input((12, 12, 3)), keras.layers.Conv2D(4, 3, padding="same", name="conv"),
         keras.layers.Conv2D(3, 1, name="head")]
    )  # fmt: skip
    mask = np.zeros((12, 12), np.float32)
    mask[2:6, 3:9] = 1
    got = camkit.explain(segmenter, X, layer="conv", target=targets.SegmentationTarget(2, mask))
    expected = (segmenter(X).numpy()[..., 2] * mask).sum((1, 2))
    np.testing.assert_allclose(got.scores, expected, rtol=1e-5)


def test_final_softmax_layer_is_explained_on_its_logits(weights):
    plain = sequential(weights)
    with_softmax = sequential(weights, final_activation="softmax")
    expected = camkit.explain(plain, X, "gradcam", "conv2")
    got = camkit.explain(with_softmax, X, "gradcam", "conv2")
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)
    np.testing.assert_allclose(got.cams, expected.cams, atol=1e-5)
    assert with_softmax.layers[-1].activation.__name__ == "softmax"  # restored


def test_unreachable_softmax_is_reported():
    class Probabilities(Subclassed):
        def call(self, x):
            return tf.nn.softmax(super().call(x))

    model = Probabilities()
    with pytest.warns(UserWarning, match="look like softmax probabilities"):
        camkit.explain(model, X, layer="conv2")


def test_mixed_float16_policy(weights):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = sequential(weights)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[1].compute_dtype == "float16"
    got = camkit.explain(model, X, "gradcam", "conv2")
    expected = camkit.explain(sequential(weights), X, "gradcam", "conv2")
    assert got.cams.dtype == np.float32
    assert np.abs(got.cams - expected.cams).max() < 2e-2


# -- the model is left as it was, and errors are clear --------------------------------------


def test_model_left_as_found(weights):
    model = nested(weights)
    model.get_layer("backbone").get_layer("conv1").trainable = False
    provider_layers = camkit.GradCAM(model).provider._layers()
    before = {p: (dict(vars(layer)), layer.trainable) for p, layer in provider_layers.items()}
    for method in camkit.methods():
        layer = None if method == "guided-backprop" else "backbone/conv2"  # it takes no layer
        camkit.explain(model, X, method, layer)
    with pytest.raises(camkit.TargetError):
        camkit.explain(model, X, "gradcam", "backbone/conv2", target=99)
    for path, layer in provider_layers.items():
        attributes, trainable = before[path]
        assert "call" not in vars(layer), path
        assert vars(layer).keys() == attributes.keys(), path
        assert layer.trainable is trainable, path
    for now, then in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(now, then)


def test_errors(weights):
    model = nested(weights)
    with pytest.raises(camkit.LayerError, match="closest valid names.*'backbone/conv2'"):
        camkit.explain(model, X, layer="backbone/conv3")
    twins = [
        keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(2, 3, name="conv")], name=n)
        for n in ("left", "right")
    ]
    inputs = keras.Input((12, 12, 3))
    joined = keras.layers.Concatenate()([twin(inputs) for twin in twins])
    two_branches = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(joined))
    with pytest.raises(camkit.LayerError, match=r"ambiguous.*\['left/conv', 'right/conv'\]"):
        camkit.explain(two_branches, X, layer="conv")
    with pytest.raises(camkit.ModelError, match=r"one image rather than .* inputs\[None\]"):
        camkit.explain(model, X[0])
    with pytest.raises(camkit.InputError, match="floating-point"):
        camkit.explain(model, (X * 10).astype(np.int32))
    with pytest.raises(camkit.ModelError, match="failed on inputs of shape"):
        camkit.explain(model, rng.normal(size=(1, 12, 12, 5)).astype(np.float32))


# -- tf-keras-vis ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "method", "options"),
    [
        ("Gradcam", "gradcam", {}),
        ("Layercam", "layercam", {}),
        # tf-keras-vis follows the authors' released code: alpha normalized by its spatial sum
        ("GradcamPlusPlus", "gradcam++", {"variant": "author-code"}),
    ],
)
def test_against_tf_keras_vis(weights, peer, method, options):
    modules = {"Gradcam": "gradcam", "Layercam": "layercam", "GradcamPlusPlus": "gradcam_plus_plus"}
    module = pytest.importorskip(f"tf_keras_vis.{modules[peer]}")
    from tf_keras_vis.utils.scores import CategoricalScore

    model = sequential(weights)
    target = [0, 3, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        visualizer = getattr(module, peer)(model, clone=True)
        expected = visualizer(
            CategoricalScore(target), X, penultimate_layer="conv2", expand_cam=False
        )
    # tf-keras-vis adds an epsilon to its min-max denominator: the same normalization for both
    expected = camkit._ops.normalize_minmax(np.asarray(expected))
    got = camkit.explain(model, X, method, "conv2", target=target, size="layer", **options)
    assert np.abs(got.cams - expected).max() <= 1e-4


def test_one_call_explain_reuses_the_compiled_capture_and_keeps_no_model_alive(weights):
    import gc
    import weakref

    model = sequential(weights)
    camkit.explain(model, X, "gradcam", "conv2", target=1)
    traces = camkit.GradCAM(model, "conv2").provider.traces
    camkit.explain(model, X, "layercam", "conv2", target=[2, 0, 1])
    assert camkit.GradCAM(model, "conv2").provider.traces == traces == 1
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize(("samples", "max_n", "method", "options"), [
    (slice(None), None, "scorecam", {}),
    # tf-keras-vis gives every sample the union of the samples' top channels: one sample here
    (slice(0, 1), 3, "fasterscorecam", {"channels": 3}),
])  # fmt: skip
def test_scorecam_against_tf_keras_vis(weights, samples, max_n, method, options):
    """tf-keras-vis scores masked inputs by the class's softmax probability, as the paper (and
    camkit's default) does. On relu1, at the input's resolution, its corner-aligned zoom of the
    masks is the identity, so the maps must agree."""
    scorecam = pytest.importorskip("tf_keras_vis.scorecam")
    from tf_keras_vis.utils.scores import CategoricalScore

    model = sequential(weights)
    target = [0, 3, 1][samples]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = scorecam.Scorecam(model, clone=True)(
            CategoricalScore(target), X[samples], penultimate_layer="relu1",
            seek_penultimate_conv_layer=False, expand_cam=False, max_N=max_n, batch_size=7,
        )  # fmt: skip
    expected = camkit._ops.normalize_minmax(np.asarray(expected))
    got = camkit.explain(model, X[samples], method, "relu1", target=target, size="layer",
                         batch_size=7, **options)  # fmt: skip
    assert np.abs(got.cams - expected).max() <= 1e-4


# -- the perturbation family and metrics: parity with PyTorch ---------------------------------


@pytest.mark.parametrize(("method", "options"), PERTURBATION_METHODS)
def test_perturbation_methods_same_maps_as_pytorch(weights, torch_twin, method, options):
    import torch

    images = torch.from_numpy(X.transpose(0, 3, 1, 2).copy())
    for layer in ("relu1", "conv2"):
        expected = camkit.explain(torch_twin, images, method, layer, target=[0, 3, 1], **options)
        for model in (sequential(weights), nested(weights)):
            got = camkit.explain(model, X, method, layer, target=[0, 3, 1], **options)
            assert np.abs(got.cams - expected.cams).max() <= 1e-4, (method, layer)


def test_metrics_same_as_pytorch(weights, torch_twin):
    import torch

    images = torch.from_numpy(X.transpose(0, 3, 1, 2).copy())
    maps = camkit.explain(torch_twin, images, "gradcam", "conv2").cams
    model = sequential(weights)
    for metric in (camkit.metrics.deletion, camkit.metrics.insertion):
        expected = metric(torch_twin, images, maps, steps=6, batch_size=5)
        got = metric(model, X, maps, steps=6, batch_size=5)
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)
    expected = camkit.metrics.confidence_change(torch_twin, images, maps)
    got = camkit.metrics.confidence_change(model, X, maps)
    np.testing.assert_allclose(got.drop, expected.drop, atol=1e-5)


def test_ablation_from_a_layer_before_a_concatenation(weights):
    """A concatenation cannot broadcast one sample's earlier tensor against the B ablated
    copies: the provider falls back to running B copies of the input, and the maps agree with
    the same network written without the concatenation."""
    inputs = keras.Input((12, 12, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
    joined = keras.layers.Concatenate(name="join")([a, b])
    out = keras.layers.Dense(3, name="fc")(keras.layers.GlobalAveragePooling2D()(joined))
    model = keras.Model(inputs, out)
    got = camkit.explain(model, X, "ablationcam", "b", target=[0, 1, 2])
    provider = camkit.AblationCAM(model, "b").provider
    assert "b" in provider._cache.repeats_prefix
    # by hand: zero each channel of b, run the head on the concatenation
    acts = keras.Model(inputs, [a, b])(X)
    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(), model.get_layer("fc")])
    a_out, b_out = (np.asarray(t) for t in acts)
    base = np.asarray(head(np.concatenate([a_out, b_out], -1)))[np.arange(3), [0, 1, 2]]
    weights_ = []
    for k in range(4):
        ablated = b_out.copy()
        ablated[..., k] = 0
        score = np.asarray(head(np.concatenate([a_out, ablated], -1)))[np.arange(3), [0, 1, 2]]
        weights_.append((base - score) / base)
    raw = np.maximum(np.einsum("kn,nhwk->nhw", np.array(weights_), b_out), 0)
    expected = camkit._ops.normalize_minmax(raw)
    assert np.abs(got.cams - expected).max() <= 1e-4


def test_half_precision_is_refused_with_the_fix(weights):
    with pytest.raises(camkit.CapabilityError, match="mixed_float16"):
        camkit.explain(sequential(weights), X, "scorecam", "conv2", precision="bfloat16")


def test_a_layer_sweep_is_not_reported_as_retracing(weights, caplog):
    """Each layer has its own compiled capture, traced once: TensorFlow's frequent-retracing
    warning (keyed on a function's code) must not fire for a sweep over layers."""
    model = sequential(weights)
    caplog.set_level("WARNING", logger="tensorflow")
    logger = __import__("logging").getLogger("tensorflow")
    logger.addHandler(caplog.handler)  # TensorFlow's logger does not propagate to the root
    try:
        for layer in ("conv1", "relu1", "pad2", "conv2", "relu2", "pad1", "conv1"):
            camkit.explain(model, X, layer=layer)
    finally:
        logger.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    assert camkit.GradCAM(model).provider.traces == 6


def test_layouts_from_keras_layers():
    """A normalization's ``axis`` says channels-first after a ``Permute``; the ``Permute``
    itself says nothing, so in this model (which has both layouts) it needs ``layout=``."""
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.Permute((3, 1, 2), name="to_first")(x)
    x = keras.layers.BatchNormalization(axis=1, name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format="channels_first", name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))
    table = camkit.layers(model, X)
    assert table["conv"].layout == "channels_last"
    assert table["bn"].layout == "channels_first"
    assert table["to_first"].layout is None
    with pytest.raises(camkit.LayerError, match="'to_first'.*layout="):
        camkit.explain(model, X, layer="to_first")
    by_hand = camkit.explain(model, X, "gradcam", "to_first", layout="channels_first", **RAW)
    np.testing.assert_allclose(
        by_hand.cams, camkit.explain(model, X, "gradcam", "conv", **RAW).cams, atol=1e-5
    )  # the same tensor, read in its own layout
    assert camkit.explain(model, X).layers == ("bn",)
