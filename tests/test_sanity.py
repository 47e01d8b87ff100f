"""The sanity checks of saliency maps (Adebayo et al., NeurIPS 2018) on every model kind.

- model-parameter randomization, cascading and independent: the layers that own parameters,
  in forward order; the trained model's maps reproduced exactly; a randomized top layer
  changes Grad-CAM's maps; each class pinned; and the user's model left exactly as it was
  (weights, statistics, modes, hooks, ``call`` attributes, outputs), also when a step fails;
- what re-initialization draws, per backend (a layer's own initializer, or seeded normal
  draws at the original's scale), and the global RNG left alone;
- data randomization with two models, by hand on the numpy toy backend;
- the provider toolkit: forward order, per-layer seeds, rescaled normal draws.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from model_kinds import KIND_NAMES, kind, same_snapshot

import camkit
from camkit import _sanity, metrics
from camkit import provider as kit
from camkit._inputs import as_model_inputs
from camkit._registry import provider_for

#: The layers that own parameters in each kind (tests/model_kinds.py), in forward order: the
#: unused ``spare`` layer is left out, and Equinox has no normalization.
PARAMETER_LAYERS = {
    "torch": ["conv1", "bn", "conv2", "fc"],
    "keras-functional": ["conv1", "bn", "conv2", "fc"],
    "keras-sequential": ["conv1", "bn", "conv2", "fc"],
    "keras-nested": ["backbone/conv1", "backbone/bn", "backbone/conv2", "fc"],
    "keras-subclassed": ["conv1", "bn", "conv2", "fc"],
    "nnx": ["conv1", "bn", "conv2", "fc"],
    "linen": ["conv1", "bn", "conv2", "fc"],
    "equinox": ["conv1", "conv2", "fc"],
    "functions": ["kernel", "dense"],  # a FunctionSplit's params, in their own order
}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _randomizer(k):
    _, provider = provider_for(k.model)
    return kit.capability(provider, kit.PARAMETER_RANDOMIZATION)


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_parameter_layers_in_forward_order(kind_name):
    k = kind(kind_name)
    layers = _randomizer(k).parameter_layers(as_model_inputs(k.inputs, None, None))
    assert list(layers) == PARAMETER_LAYERS[kind_name]


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_cascading_and_independent_randomization_leave_the_model_as_it_was(kind_name):
    k = kind(kind_name)
    before = k.snapshot()
    trained = camkit.explain(k.model, k.inputs, layer=k.layer)
    cascade = metrics.parameter_randomization(k.model, k.inputs, layer=k.layer)
    independent = metrics.parameter_randomization(k.model, k.inputs, layer=k.layer, cascading=False)
    assert same_snapshot(before, k.snapshot()), "the model was changed"
    after = camkit.explain(k.model, k.inputs, layer=k.layer)
    np.testing.assert_array_equal(after.cams, trained.cams)  # its outputs too
    np.testing.assert_array_equal(after.scores, trained.scores)

    top_down = tuple(reversed(PARAMETER_LAYERS[kind_name]))
    for check, test in ((cascade, "cascading"), (independent, "independent")):
        assert check.test == test and check.steps == top_down
        np.testing.assert_array_equal(check.original, trained.cams)  # reproduced exactly
        np.testing.assert_array_equal(check.targets, trained.targets)
        assert check.maps.shape == (len(top_down), *trained.cams.shape)
        for values in (check.spearman, check.spearman_abs, check.ssim, check.top_k):
            assert values.shape == (len(top_down), 2)
        # the top layer randomized: Grad-CAM's maps are no longer the trained model's
        assert check.means["spearman"][0] < 0.8 and check.means["ssim"][0] < 0.8
    # both first steps randomize the top layer alone, with the same values
    np.testing.assert_array_equal(cascade.maps[0], independent.maps[0])
    assert str(cascade).splitlines()[0] == "cascading randomization, 2 samples (means):"
    # and explain the class pinned from the trained model: with the top layer randomized, the
    # top-1 class changes (here, in all kinds but Linen and function pairs)
    top_randomized = _randomizer(k).randomized([top_down[0]], seed=0)
    pinned = camkit.explain(top_randomized, k.inputs, layer=k.layer, target=trained.targets)
    np.testing.assert_array_equal(cascade.maps[0], pinned.cams)


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_a_model_with_nothing_randomized_gives_the_trained_maps(kind_name):
    k = kind(kind_name)
    trained = camkit.explain(k.model, k.inputs, layer=k.layer)
    same = _randomizer(k).randomized([], seed=0)
    assert same is not k.model
    np.testing.assert_array_equal(camkit.explain(same, k.inputs, layer=k.layer).cams, trained.cams)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_a_failing_step_leaves_the_model_as_it_was(kind_name, monkeypatch):
    k = kind(kind_name)
    before = k.snapshot()
    trained = camkit.explain(k.model, k.inputs, layer=k.layer)
    calls = []

    def failing_explain(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the trained model, the first step, then a failure
            raise Interrupted
        return camkit.explain(*args, **kwargs)

    monkeypatch.setattr(_sanity, "explain", failing_explain)
    with pytest.raises(Interrupted):
        metrics.parameter_randomization(k.model, k.inputs, layer=k.layer)
    assert same_snapshot(before, k.snapshot()), "the model was changed"
    np.testing.assert_array_equal(camkit.explain(k.model, k.inputs, layer=k.layer).cams,
                                  trained.cams)  # fmt: skip


def test_depth_runs_the_top_steps_only():
    """torch's parameter layers are conv1, bn, conv2, fc: depth=2 randomizes fc, then fc and
    conv2, the first two steps of the full cascade, with the same maps."""
    k = kind("torch")
    full = metrics.parameter_randomization(k.model, k.inputs, layer=k.layer, seed=1)
    top = metrics.parameter_randomization(k.model, k.inputs, layer=k.layer, seed=1, depth=2)
    assert full.steps == ("fc", "conv2", "bn", "conv1") and top.steps == ("fc", "conv2")
    np.testing.assert_array_equal(top.maps, full.maps[:2])
    with pytest.raises(camkit.InputError, match="depth=0"):
        metrics.parameter_randomization(k.model, k.inputs, layer=k.layer, depth=0)


@pytest.mark.parametrize("method", sorted(camkit.methods()))
def test_every_method_passes_through_the_check(method):
    """Each method's trained maps are explained again at every step with the same layers, or
    with none for a method that takes none (guided backprop)."""
    k = kind("torch")
    layer = None if method in ("guided-backprop", "fullgrad") else k.layer
    check = metrics.parameter_randomization(k.model, k.inputs, method, layer, depth=1)
    assert check.maps.shape == (1, *check.original.shape) and check.steps == ("fc",)


def test_randomization_is_seeded():
    k = kind("torch")
    first = metrics.parameter_randomization(k.model, k.inputs, layer=k.layer, seed=3)
    again = metrics.parameter_randomization(k.model, k.inputs, layer=k.layer, seed=3)
    other = metrics.parameter_randomization(k.model, k.inputs, layer=k.layer, seed=4)
    np.testing.assert_array_equal(first.maps, again.maps)
    assert not np.array_equal(first.maps[0], other.maps[0])


# -- what re-initialization draws ----------------------------------------------------------------


def test_torch_reinitializes_by_reset_parameters_and_keeps_statistics():
    torch = pytest.importorskip("torch")
    k = kind("torch")
    state = torch.get_rng_state()
    copy = _randomizer(k).randomized(["conv1", "bn"], seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # the user's RNG is left alone
    # conv1's own initialization, seeded as camkit seeds it
    torch.manual_seed(kit.parameter_seed(0, "conv1"))
    fresh = torch.nn.Conv2d(3, 4, 3, padding=1)
    assert torch.equal(copy.conv1.weight, fresh.weight) and torch.equal(copy.conv1.bias, fresh.bias)
    # a batch norm resets its scale and shift, and keeps its running statistics
    assert torch.equal(copy.bn.weight, torch.ones(4)) and torch.equal(copy.bn.bias, torch.zeros(4))
    assert torch.equal(copy.bn.running_mean, k.model.bn.running_mean)
    assert torch.equal(copy.bn.running_var, k.model.bn.running_var)
    assert torch.equal(copy.conv2.weight, k.model.conv2.weight)
    assert [m.training for m in copy.modules()] == [m.training for m in k.model.modules()]


def test_torch_module_without_reset_parameters_gets_rescaled_normal_draws():
    torch = pytest.importorskip("torch")

    class Scale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = torch.nn.Parameter(torch.full((4,), 2.0))

        def forward(self, x):
            return x * self.gain[:, None, None]

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), Scale())
    copy = kit.capability(provider_for(model)[1], kit.PARAMETER_RANDOMIZATION).randomized(["1"], 0)
    # RMS of (2, 2, 2, 2) is 2: draws of a seeded standard normal, times 2
    generator = torch.Generator().manual_seed(kit.parameter_seed(0, "1", "gain"))
    assert torch.equal(copy[1].gain, torch.randn(4, generator=generator) * 2)
    assert torch.equal(model[1].gain, torch.full((4,), 2.0))


def test_keras_reinitializes_by_the_layers_initializers():
    tf = pytest.importorskip("tensorflow")
    k = kind("keras-functional")
    keras = pytest.importorskip("keras")
    substituted = _randomizer(k).randomized(["conv1", "bn"], seed=0)
    new = {variable.path: value for variable, value in substituted.state_mapping}
    assert sorted(new) == ["bn/beta", "bn/gamma", "conv1/bias", "conv1/kernel"]  # no statistics
    kernel = keras.initializers.GlorotUniform(seed=kit.parameter_seed(0, "conv1", "kernel"))
    np.testing.assert_array_equal(new["conv1/kernel"], kernel((3, 3, 3, 4), dtype="float32"))
    np.testing.assert_array_equal(new["bn/gamma"], np.ones(4))
    # calling it runs the model on the new values, without changing the model
    conv1 = k.model.get_layer("conv1").kernel
    saved = conv1.numpy()
    assert not np.allclose(substituted(k.inputs), k.model(k.inputs))
    np.testing.assert_array_equal(np.asarray(conv1), saved)
    assert tf.is_tensor(new["conv1/bias"])


def test_keras_cam_reads_the_new_classifier():
    # CAM weights the layer's channels by the classifier's kernel, which the fc step alone
    # randomizes: the maps change only if the kernel is read in the StatelessScope
    k = kind("keras-functional")
    check = metrics.parameter_randomization(k.model, k.inputs, "cam", k.layer, cascading=False)
    assert check.steps[0] == "fc" and check.means["spearman"][0] < 0.5


def test_tf_keras_is_refused_by_name():
    pytest.importorskip("tensorflow")
    tf_keras = pytest.importorskip("tf_keras")
    model = tf_keras.Sequential(
        [tf_keras.Input((8, 8, 3)), tf_keras.layers.Conv2D(2, 3), tf_keras.layers.Flatten(),
         tf_keras.layers.Dense(2)]
    )  # fmt: skip
    inputs = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(camkit.CapabilityError, match="tf-keras does not have"):
        metrics.parameter_randomization(model, inputs)


@pytest.mark.parametrize("kind_name", ["nnx", "linen", "equinox", "functions"])
def test_jax_draws_rescaled_normal_values_for_every_leaf(kind_name):
    pytest.importorskip("jax")
    k = kind(kind_name)
    top = PARAMETER_LAYERS[kind_name][-1]
    copy = _randomizer(k).randomized([top], seed=0)
    kernel = {  # the top layer's weight matrix, before and after
        "nnx": lambda m: (m.fc.kernel[...], ("fc", "kernel")),
        "linen": lambda m: (m.variables["params"]["fc"]["kernel"], ("fc/kernel", "")),
        "equinox": lambda m: (m.fc.weight, ("fc", "weight")),
        "functions": lambda m: (m.params["dense"], ("dense", "")),
    }[kind_name]
    model = k.model if kind_name != "linen" else camkit_linen(k.model)
    original, names = kernel(model)
    randomized, _ = kernel(copy)
    wanted = kit.rescaled_normal(np.asarray(original), kit.parameter_seed(0, *names))
    np.testing.assert_array_equal(np.asarray(randomized), wanted)
    assert np.asarray(original).dtype == np.asarray(randomized).dtype


def camkit_linen(pair):
    import camkit_jax

    return camkit_jax.Linen(*pair)


# -- arguments and capabilities ------------------------------------------------------------------


def test_a_backend_without_the_capability_is_named(numpy_backend):
    model = numpy_backend.GapLinearModel(np.eye(2, dtype=np.float32))
    with pytest.raises(camkit.CapabilityError, match="'parameter_randomization'.*'numpy'"):
        metrics.parameter_randomization(model, np.ones((1, 2, 1, 4), np.float32))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [({"cascading": "yes"}, camkit.InputError, "cascading='yes'"),
     ({"seed": -1}, camkit.InputError, "seed=-1"),
     ({"top_k": 2.0}, camkit.InputError, "top_k=2.0"),
     ({"target": camkit.targets.TopK(2)}, camkit.TargetError, "2 maps per sample"),
     ({"layer": "conv9"}, camkit.LayerError, "conv9")],
)  # fmt: skip
def test_bad_arguments_are_named(options, error, message, monkeypatch):
    k = kind("torch")
    before = k.snapshot()
    explained = []

    def counting_explain(*args, **kwargs):
        explained.append(camkit.explain(*args, **kwargs))
        return explained[-1]

    monkeypatch.setattr(_sanity, "explain", counting_explain)
    with pytest.raises(error, match=message):
        metrics.parameter_randomization(k.model, k.inputs, **{"layer": k.layer, **options})
    assert len(explained) <= 1  # refused before any randomized model is explained
    assert same_snapshot(before, k.snapshot())


def test_a_method_that_draws_noise_gets_the_same_draws_at_every_step():
    k = kind("torch")
    options = {"layer": k.layer, "samples": 2}
    check = metrics.parameter_randomization(k.model, k.inputs, "smoothgradcam++", **options)
    seeded = camkit.explain(k.model, k.inputs, "smoothgradcam++", seed=0, **options)
    np.testing.assert_array_equal(check.original, seeded.cams)


# -- data randomization --------------------------------------------------------------------------

#: One sample, two channels over four pixels: channel 0 rises, channel 1 falls (half as high).
FEATURES = np.array([[[[0, 1, 2, 3]], [[1.5, 1, 0.5, 0]]]], np.float32)


def test_data_randomization_by_hand(numpy_backend):
    # A GAP-linear model's Grad-CAM weights are W[k, c] / 4 (dS/dA = W[k, c] / HW), so the
    # map of class k is ReLU(sum_c W[k, c] A[c]) / 4, min-max normalized.
    # Trained: W = I, logits (mean A0, mean A1) = (1.5, 0.75), class 0, map A0 ->
    # [0, 1/3, 2/3, 1]. Random labels: W swapped, logits (0.75, 1.5), top class 1; pinned to
    # class 0 its map is A1 -> [1, 2/3, 1/3, 0], the reverse ranking.
    trained = numpy_backend.GapLinearModel(np.eye(2, dtype=np.float32))
    shuffled = numpy_backend.GapLinearModel(np.eye(2, dtype=np.float32)[::-1].copy())
    check = metrics.data_randomization(trained, shuffled, FEATURES, top_k=2)
    assert check.test == "data" and check.steps == ("random labels",)
    np.testing.assert_allclose(check.original, [[[0, 1 / 3, 2 / 3, 1]]], atol=1e-6)
    np.testing.assert_allclose(check.maps[0], [[[1, 2 / 3, 1 / 3, 0]]], atol=1e-6)
    np.testing.assert_array_equal(check.targets, [0])
    np.testing.assert_allclose(check.spearman, [[-1.0]])  # reversed ranks
    # the two most salient pixels: {3, 2} and {0, 1}, none shared
    np.testing.assert_array_equal(check.top_k, [[0.0]])
    assert check.ssim[0, 0] < 0
    # the same model twice: identical maps, every similarity 1
    same = metrics.data_randomization(trained, trained, FEATURES)
    for values in (same.spearman, same.spearman_abs, same.ssim, same.top_k):
        np.testing.assert_allclose(values, [[1.0]])


def test_data_randomization_with_two_torch_models():
    torch = pytest.importorskip("torch")
    k = kind("torch")
    torch.manual_seed(1)
    other = type(k.model)()  # the same architecture, other weights
    before = k.snapshot()
    check = metrics.data_randomization(k.model, other, k.inputs, layer=k.layer)
    assert same_snapshot(before, k.snapshot())
    np.testing.assert_array_equal(
        check.original, camkit.explain(k.model, k.inputs, layer=k.layer).cams
    )
    assert check.maps.shape == (1, 2, 8, 8) and (check.spearman < 1).all()


def test_data_randomization_of_keras_models_named_apart():
    keras = pytest.importorskip("keras")
    k = kind("keras-functional")

    def build():  # automatic names: the second model's layers are named apart
        keras.utils.set_random_seed(7)
        layers = keras.layers
        parts = [layers.Conv2D(4, 3), layers.GlobalAveragePooling2D(), layers.Dense(3)]
        return keras.Sequential([keras.Input((8, 8, 3)), *parts])

    first, second = build(), build()
    names = [model.layers[0].name for model in (first, second)]
    assert names[0] != names[1]
    check = metrics.data_randomization(first, second, k.inputs, layer=names[0],
                                       random_label_layer=names[1])  # fmt: skip
    np.testing.assert_allclose(check.spearman, [[1.0, 1.0]])  # the same weights
    automatic = metrics.data_randomization(first, second, k.inputs)
    np.testing.assert_array_equal(automatic.maps, check.maps)


# -- the provider toolkit ------------------------------------------------------------------------


def test_forward_order():
    table = kit.LayerTable.of(
        [("conv", (1, 4, 8, 8), "channels_first"), ("fc", (1, 3), None)], (8, 8)
    )
    owners = ["fc", "", "conv.holder", "unused", "conv"]
    # the model's own parameters first; "conv.holder" where its parent "conv" runs (ties keep
    # the given order); "unused" never runs
    assert kit.forward_order(owners, table, ".") == ["", "conv.holder", "conv", "fc"]


def test_parameter_seed_and_rescaled_normal():
    assert kit.parameter_seed(0, "fc") == kit.parameter_seed(0, "fc")
    seeds = [(0, "fc"), (1, "fc"), (0, "conv"), (0, "fc", "bias")]
    assert len({kit.parameter_seed(*names) for names in seeds}) == 4  # all different
    ones = np.ones(4000, np.float16)
    draws = kit.rescaled_normal(ones, 3)  # RMS 1: standard normal draws
    assert draws.dtype == np.float16 and abs(float(draws.std()) - 1) < 0.05
    np.testing.assert_array_equal(draws, kit.rescaled_normal(ones, 3))
    np.testing.assert_array_equal(kit.rescaled_normal(np.zeros(3), 3), np.zeros(3))
