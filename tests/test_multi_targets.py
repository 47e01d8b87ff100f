"""Several maps per sample from one forward pass: ``TopK``, classes per sample, all classes.

The K maps of one call must equal K single-target calls (to 1e-5) for every method on the three
backends, and on every kind of model, which must be left as it was; the targets' scores are
checked by hand on tiny arrays.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from model_kinds import KIND_NAMES, kind, same_snapshot, with_nan

import camkit
from camkit import targets

#: Options that keep each method small and deterministic.
OPTIONS = {
    "smoothgradcam++": {"samples": 2, "seed": 3},
    "sscam": {"samples": 2, "seed": 3},
    "iscam": {"samples": 2},
    "fasterscorecam": {"channels": 2},
}
BACKENDS = [name for name in ("torch", "keras-functional", "nnx") if name in KIND_NAMES]


def _k_maps_equal_single_calls(k, method, target, layer=None):
    options = OPTIONS.get(method, {})
    layer = k.layer if layer is None and method != "guided-backprop" else layer
    try:
        several = camkit.explain(k.model, k.inputs, method, layer, target=target, **options)
    except camkit.CapabilityError:
        pytest.skip(f"{method} needs a capability this kind lacks")
    count, columns = several.scores.shape
    assert several.cams.shape[:2] == (count, columns) and several.targets.shape == (count, columns)
    for column in range(columns):
        one = camkit.explain(
            k.model, k.inputs, method, layer, target=several.targets[:, column], **options
        )
        np.testing.assert_allclose(several.cams[:, column], one.cams, atol=1e-5)
        np.testing.assert_allclose(several.scores[:, column], one.scores, atol=1e-5, rtol=1e-5)
    return several


#: Methods whose multi-target path differs (fused JAX pipeline, element-wise gradients,
#: classifier weights, per-pass scoring, noisy captures, principal components, gradients of
#: the image: guided and with the bias terms).
PATHS = ["gradcam", "layercam", "cam", "scorecam", "ablationcam", "smoothgradcam++", "eigencam",
         "guided-gradcam", "fullgrad"]  # fmt: skip
CASES = [("torch", method) for method in sorted(camkit.methods())] + [
    (kind_name, method) for kind_name in BACKENDS[1:] for method in PATHS
]


@pytest.mark.parametrize(("kind_name", "method"), CASES)
def test_every_method_gives_the_maps_of_single_calls(kind_name, method):
    several = _k_maps_equal_single_calls(kind(kind_name), method, targets.TopK(2))
    # the model has 3 classes: the top two differ, highest first
    assert (several.targets[:, 0] != several.targets[:, 1]).all()
    assert (several.scores[:, 0] >= several.scores[:, 1]).all()


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_classes_per_sample_on_every_kind_leave_the_model_as_it_was(kind_name, method):
    k = kind(kind_name)
    before = k.snapshot()
    several = _k_maps_equal_single_calls(k, method, [[2, 0], [1, 2]])
    assert several.targets.tolist() == [[2, 0], [1, 2]]
    assert same_snapshot(before, k.snapshot())


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_the_automatic_layer_with_several_targets(kind_name):
    k = kind(kind_name)
    chosen = camkit.explain(k.model, k.inputs).layers
    several = camkit.explain(k.model, k.inputs, target=targets.AllClasses())
    assert several.layers == chosen and several.cams.shape[:2] == (2, 3)
    assert several.targets.tolist() == [[0, 1, 2]] * 2


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_a_nan_sample_is_named_or_gets_nan_maps_for_all_its_targets(kind_name):
    k = kind(kind_name)
    bad = with_nan(k, sample=1)
    with pytest.raises(camkit.InputError, match=r"samples \[1\]"):
        camkit.explain(k.model, bad, "gradcam", k.layer, target=targets.TopK(2))
    marked = camkit.explain(
        k.model, bad, "gradcam", k.layer, target=targets.TopK(2), nonfinite="nan"
    )
    assert np.isnan(marked.cams[1]).all() and np.isfinite(marked.cams[0]).all()


# -- the targets' scores by hand --------------------------------------------------------------

LOGITS = np.array([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0]], np.float32)


def _softmax(row):
    return np.exp(row) / np.exp(row).sum()


def test_top_k_by_hand():
    scored = targets.TopK(2).resolve(LOGITS)
    # row 0: 3 (class 1) > 2 (class 2) > 1; row 1: 4 (class 2) > 0.5 (class 0)
    assert np.asarray(scored.indices).tolist() == [[1, 2], [2, 0]]
    np.testing.assert_allclose(scored.scores, [[3.0, 2.0], [4.0, 0.5]])
    probability = targets.TopK(2, score="probability").resolve(LOGITS)
    # softmax([1, 3, 2]) = e^[1, 3, 2] / (e + e^3 + e^2) = [0.0900, 0.6652, 0.2447]
    np.testing.assert_allclose(probability.scores[0], [0.66524096, 0.24472847], rtol=1e-6)
    sigmoid = targets.TopK(1, score="sigmoid").resolve(LOGITS)
    # 1 / (1 + e^-3) = 0.95257, 1 / (1 + e^-4) = 0.98201
    np.testing.assert_allclose(sigmoid.scores, [[0.95257413], [0.98201379]], rtol=1e-6)


def test_ties_rank_the_lower_class_first():
    scored = targets.TopK(3).resolve(np.array([[2.0, 5.0, 2.0]], np.float32))
    assert np.asarray(scored.indices).tolist() == [[1, 0, 2]]


def test_classes_and_all_classes_by_hand():
    per_sample = targets.Classes([[0, 2], [1, 1]]).resolve(LOGITS)
    np.testing.assert_allclose(per_sample.scores, [[1.0, 2.0], [-1.0, -1.0]])
    shared = targets.Classes([2], score="probability").resolve(LOGITS)
    np.testing.assert_allclose(
        shared.scores[:, 0], [_softmax(LOGITS[0])[2], _softmax(LOGITS[1])[2]], rtol=1e-6
    )
    every = targets.AllClasses().resolve(LOGITS)
    np.testing.assert_allclose(every.scores, LOGITS)
    assert np.asarray(every.indices).tolist() == [[0, 1, 2]] * 2


def test_sigmoid_target_by_hand_and_never_nan():
    scored = targets.SigmoidTarget(1).resolve(LOGITS)
    # 1 / (1 + e^-3) and 1 / (1 + e^1) = 0.26894
    np.testing.assert_allclose(scored.scores, [0.95257413, 0.26894142], rtol=1e-6)
    torch = pytest.importorskip("torch")
    extreme = torch.tensor([[-200.0, 200.0]], requires_grad=True)
    score = targets.SigmoidTarget(0).resolve(extreme).scores.sum()
    (grad,) = torch.autograd.grad(score, extreme)
    # sigmoid(-200) underflows to 0 and so does its gradient, instead of inf / inf = NaN
    assert score.item() == 0.0 and torch.isfinite(grad).all()


def test_a_two_dimensional_list_is_classes_per_sample():
    assert camkit.targets.Classes([[1, 2]]) == targets.Classes(np.array([[1, 2]]))
    k = kind(KIND_NAMES[0])
    result = camkit.explain(k.model, k.inputs, "gradcam", k.layer, target=[[1], [0]])
    assert result.targets.tolist() == [[1], [0]] and result.cams.shape == (2, 1, 8, 8)


@pytest.mark.parametrize("kind_name", BACKENDS)
def test_sigmoid_maps_equal_logit_maps_for_grad_cam(kind_name):
    # dS/dA of sigmoid(y) is sigmoid'(y) dy/dA: one positive factor per sample, which min-max
    # normalization removes from Grad-CAM's map
    k = kind(kind_name)
    sigmoid = camkit.explain(k.model, k.inputs, "gradcam", k.layer, target=targets.SigmoidTarget(1))
    logit = camkit.explain(k.model, k.inputs, "gradcam", k.layer, target=1)
    np.testing.assert_allclose(sigmoid.cams, logit.cams, atol=1e-5)
    np.testing.assert_allclose(sigmoid.scores, 1 / (1 + np.exp(-logit.scores)), rtol=1e-5)


# -- one forward pass -------------------------------------------------------------------------


def test_torch_runs_one_forward_and_one_batched_backward(monkeypatch):
    torch = pytest.importorskip("torch")
    k = kind("torch")
    cam = camkit.GradCAM(k.model, k.layer)
    cam(k.inputs, targets.TopK(3))  # the first call also probes the layer table
    forwards, backwards = [], []
    handle = k.model.register_forward_hook(lambda *args: forwards.append(1))
    grad = torch.autograd.grad

    def counted(*args, **kwargs):
        backwards.append(kwargs.get("is_grads_batched", False))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    try:
        cam(k.inputs, targets.TopK(3))
    finally:
        handle.remove()
    assert forwards == [1] and backwards == [True]


def test_torch_falls_back_to_one_backward_per_target_where_vmap_cannot_run():
    torch = pytest.importorskip("torch")

    class Square(torch.autograd.Function):
        """A function whose backward reads a value (``.item()``), which autograd cannot vmap."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2 * x * grad if grad.abs().sum().item() >= 0 else None

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(Square.apply(self.conv(x)).mean((2, 3)))

    model = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError):  # the premise: the batched backward fails here
        leaf = torch.ones(2, requires_grad=True)
        torch.autograd.grad(Square.apply(leaf), leaf, torch.eye(2), is_grads_batched=True)
    several = camkit.explain(model, x, "gradcam", "conv", target=targets.TopK(3))
    for column in range(3):
        one = camkit.explain(model, x, "gradcam", "conv", target=several.targets[:, column])
        np.testing.assert_allclose(several.cams[:, column], one.cams, atol=1e-5)


def test_jax_compiles_one_capture_for_every_class_list():
    pytest.importorskip("flax")
    k = kind("nnx")
    cam = camkit.GradCAM(k.model, k.layer)
    cam(k.inputs, [[0, 1], [1, 2]])
    traces = cam.provider.traces
    cam(k.inputs, [[2, 0], [0, 2]])  # new classes are arrays of the compiled capture
    assert cam.provider.traces == traces


def test_all_classes_gives_one_map_per_class_in_order():
    k = kind(KIND_NAMES[0])
    every = camkit.explain(k.model, k.inputs, "gradcam", k.layer, target=targets.AllClasses())
    listed = camkit.explain(k.model, k.inputs, "gradcam", k.layer, target=[[0, 1, 2]])
    np.testing.assert_allclose(every.cams, listed.cams, atol=1e-6)
    assert every.cams.shape == (2, 3, 8, 8) and math.isclose(float(every.cams.max()), 1.0)
