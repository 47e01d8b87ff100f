"""The PyTorch backend: correct gradients, the model left as found, clear errors, every target."""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import camkit  # noqa: E402
from camkit import targets  # noqa: E402

RAW = {"relu": False, "normalize": "none", "size": "layer"}


class SmallCNN(nn.Module):
    """conv, ReLU (in place), strided conv, ReLU, global average pooling, linear."""

    def __init__(self, classes: int = 5, inplace: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return SmallCNN()


@pytest.fixture
def x():
    return torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def reference_gradcam(model, x, target):
    """Grad-CAM on conv2 written out by hand with torch ops and a full backward."""
    acts = {}
    handle = model.conv2.register_forward_hook(lambda m, a, out: acts.update(a=out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    a = acts["a"]
    a.retain_grad()
    logits[torch.arange(len(x)), target].sum().backward()
    weights = a.grad.mean(dim=(2, 3), keepdim=True)
    return (weights * a).sum(1).detach().numpy(), a.detach().numpy(), a.grad.numpy()


def test_gradients_match_a_full_backward(x):
    torch.manual_seed(0)
    model = SmallCNN(inplace=False)  # the reference reads conv2's output after the ReLU
    target = [0, 3, 1]
    expected, _, _ = reference_gradcam(model, x, target)
    model.zero_grad(set_to_none=True)
    got = camkit.explain(model, x, "gradcam", "conv2", target=target, **RAW)
    np.testing.assert_allclose(got.cams, expected, atol=1e-5)
    assert got.targets.tolist() == target


def test_in_place_relu_after_the_layer_keeps_the_pre_relu_activation(model, x):
    # conv2 is followed by ReLU(inplace=True): the map must use conv2's own (signed) output
    torch.manual_seed(0)
    reference = SmallCNN(inplace=False)
    reference.load_state_dict(model.state_dict())
    expected, _, _ = reference_gradcam(reference, x, [2, 2, 2])
    got = camkit.explain(model, x, "gradcam", "conv2", target=2, **RAW)
    np.testing.assert_allclose(got.cams, expected, atol=1e-5)


def test_cam_equals_gradcam_up_to_a_per_image_scale(model, x):
    # with GAP + linear, dS/dA = W[k] / HW everywhere, so Grad-CAM = CAM / HW
    cam = camkit.explain(model, x, "cam", "relu2", **RAW).cams
    gradcam = camkit.explain(model, x, "gradcam", "relu2", **RAW).cams
    height, width = cam.shape[1:]
    np.testing.assert_allclose(gradcam * height * width, cam, rtol=1e-4, atol=1e-5)
    normalized = [camkit.explain(model, x, m, "relu2", relu=True).cams for m in ("cam", "gradcam")]
    np.testing.assert_allclose(normalized[0], normalized[1], atol=1e-5)


def test_automatic_layer_is_the_last_spatial_one(model, x):
    explanation = camkit.explain(model, x)
    assert explanation.layers == ("relu2",)
    assert explanation.cams.shape == (3, 12, 12)
    assert explanation.cams.dtype == np.float32
    assert 0.0 <= explanation.cams.min() and explanation.cams.max() <= 1.0


def test_layer_by_module_object(model, x):
    assert camkit.explain(model, x, layer=model.conv1).layers == ("conv1",)


def snapshot(model):
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_unchanged(before, model):
    after = snapshot(model)
    for key in ("training", "requires_grad", "hooks"):
        assert before[key] == after[key], key
    assert all(g is None for g in after["grads"])
    for name, value in before["state"].items():
        assert torch.equal(value, after["state"][name]), name


@pytest.mark.parametrize("grad_mode", [True, False])
def test_model_left_as_found(model, x, grad_mode):
    model.train()
    model.conv1.eval()
    model.fc.weight.requires_grad_(False)  # partly frozen
    model.add_module("drop", nn.Dropout(0.5))
    before = snapshot(model)
    with torch.set_grad_enabled(grad_mode):
        for method in camkit.methods():
            camkit.explain(model, x, method, None if method == "guided-backprop" else "conv2")
        assert torch.is_grad_enabled() is grad_mode
    assert_unchanged(before, model)


def test_fully_frozen_model_still_has_gradients(model, x):
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    explanation = camkit.explain(model, x, "gradcam", "conv2")
    assert explanation.cams.max() > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target": 9}, camkit.TargetError, "target=9 is out of range: the model has 5 outputs"),
        ({"target": [0, 1]}, camkit.TargetError, "2 indices for a batch of 3"),
        ({"layer": "conv3"}, camkit.LayerError, "closest valid names.*'conv1'"),
        (
            {"layer": "fc"},
            camkit.LayerError,
            r"layer .fc. outputs shape \(3, 5\), which has no.*include: .conv1. \(3, 6, 12, 12\)",
        ),
        ({"method": "gradcam+"}, camkit.InputError, "closest valid names.*'gradcam'"),
        ({"size": (0, 3)}, camkit.InputError, "size="),
        ({"normalize": "l2"}, camkit.InputError, "normalize='l2'"),
    ],
)
def test_errors_leave_the_model_as_found(model, x, kwargs, error, match):
    model.train()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        camkit.explain(model, x, **kwargs)
    assert_unchanged(before, model)
    assert torch.is_grad_enabled()


def test_bad_inputs(model, x):
    with pytest.raises(camkit.InputError, match="dtype torch.float64 but the model's parameters"):
        camkit.explain(model, x.double())
    with pytest.raises(camkit.InputError, match="floating-point inputs"):
        camkit.explain(model, (x * 10).to(torch.uint8))
    with pytest.raises(camkit.ModelError, match=r"one image rather than .* inputs\[None\]"):
        camkit.explain(model, x[0])  # a batch of signals to camkit, and the model fails
    with pytest.raises(camkit.InputError, match="inputs are on meta but the model is on cpu"):
        camkit.explain(model, torch.empty(1, 3, 8, 8, device="meta"))
    with pytest.raises(camkit.ModelError, match="failed on inputs of shape"):
        camkit.explain(model, torch.randn(1, 4, 8, 8), layer="conv2")


def test_numpy_inputs_are_converted(model, x):
    got = camkit.explain(model, x.numpy().astype(np.float64), layer="conv2")
    np.testing.assert_allclose(got.cams, camkit.explain(model, x, layer="conv2").cams, atol=1e-6)


def test_score_that_does_not_reach_the_layer(x):
    class Detached(SmallCNN):
        def forward(self, x):
            features = self.relu2(self.conv2(self.relu1(self.conv1(x)))).detach()
            return self.fc(torch.flatten(self.pool(features), 1))

    with pytest.raises(camkit.LayerError, match="does not depend on layer 'conv2'"):
        camkit.explain(Detached(), x, layer="conv2")

    class Unused(SmallCNN):
        def __init__(self):
            super().__init__()
            self.spare = nn.Conv2d(8, 8, 1)

    with pytest.raises(camkit.LayerError, match="'spare' was not called"):
        camkit.explain(Unused(), x, layer="spare")


def test_per_sample_softmax_and_callable_targets(model, x):
    logits = model(x).detach()
    explanation = camkit.explain(model, x, target=None, layer="conv2")
    assert explanation.targets.tolist() == logits.argmax(1).tolist()
    np.testing.assert_allclose(explanation.scores, logits.max(1).values.numpy(), atol=1e-6)

    soft = camkit.explain(model, x, target=targets.SoftmaxTarget([1, 2, 3]), layer="conv2")
    np.testing.assert_allclose(soft.scores, logits.softmax(1)[[0, 1, 2], [1, 2, 3]], atol=1e-6)

    def margin(outputs):
        return outputs[:, 1] - outputs[:, 0]

    custom = camkit.explain(model, x, target=margin, layer="conv2", **RAW)
    assert custom.targets.tolist() == [-1, -1, -1]
    # the gradient of a difference of logits is the difference of gradients: linearity
    one = camkit.explain(model, x, target=1, layer="conv2", **RAW).cams
    zero = camkit.explain(model, x, target=0, layer="conv2", **RAW).cams
    np.testing.assert_allclose(custom.cams, one - zero, atol=1e-5)


def test_regression_and_segmentation_targets(x):
    torch.manual_seed(0)
    regressor = SmallCNN(classes=1)
    got = camkit.explain(regressor, x, target=targets.RegressionTarget(0), layer="conv2")
    np.testing.assert_allclose(got.scores, regressor(x)[:, 0].detach().numpy(), atol=1e-6)

    segmenter = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    mask = np.zeros((12, 12), np.float32)
    mask[2:6, 3:9] = 1
    target = targets.SegmentationTarget(2, mask)
    got = camkit.explain(segmenter, x, target=target, layer="1")
    expected = (segmenter(x)[:, 2] * torch.from_numpy(mask)).sum((1, 2)).detach().numpy()
    np.testing.assert_allclose(got.scores, expected, rtol=1e-5)
    assert got.targets.tolist() == [2, 2, 2]
    with pytest.raises(camkit.TargetError, match="outputs of shape"):
        camkit.explain(segmenter, x, layer="1")


def test_shared_module_is_captured_at_its_last_call(x):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.conv2 = nn.Conv2d(6, 6, 3, stride=2, padding=1)
            self.act = nn.ReLU()  # used twice
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            x = self.act(self.conv2(self.act(self.conv1(x))))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    model = Shared()
    with camkit.GradCAM(model, **RAW) as method:
        first = method(x, target=1)
        second = method(x, target=1)  # now knows act runs twice: autograd starts at call 2
    assert method.layers == ("act",)
    assert first.cams.shape == (3, 6, 6)
    np.testing.assert_allclose(first.cams, second.cams, atol=1e-6)
    # the same network with a separate module for the second ReLU: the same maps
    unshared = Shared()
    unshared.load_state_dict(model.state_dict())
    unshared.head_act = nn.ReLU()
    unshared.forward = lambda x: unshared.fc(
        unshared.head_act(unshared.conv2(unshared.act(unshared.conv1(x)))).mean((2, 3))
    )
    expected = camkit.explain(unshared, x, "gradcam", "head_act", target=1, **RAW).cams
    np.testing.assert_allclose(first.cams, expected, atol=1e-6)


def test_multiple_layers_keep_their_gradients_connected(model, x):
    both = camkit.explain(model, x, "gradcam", ["conv1", "conv2"], target=1, **RAW, fusion="max")
    alone = [camkit.explain(model, x, "gradcam", n, target=1, relu=False, normalize="none").cams
             for n in ("conv1", "conv2")]  # fmt: skip
    conv2_on_input = camkit._ops.resize_linear(alone[1], (12, 12))
    np.testing.assert_allclose(both.cams, np.maximum(alone[0], conv2_on_input), atol=1e-5)


def test_method_object_reuse_and_close(model, x):
    method = camkit.LayerCAM(model, "conv1")
    first = method(x[:1], target=0)
    batch = method(x, target=0)
    np.testing.assert_allclose(first.cams[0], batch.cams[0], atol=1e-6)
    method.close()
    with pytest.raises(camkit.CamkitError, match="closed"):
        method(x)


def test_vision_transformer_tokens(x):
    class TinyViT(nn.Module):
        def __init__(self, registers: int = 0):
            super().__init__()
            self.patch = nn.Linear(27, 8)  # 3x3 patches of 3 channels: 12x12 -> 4x4 tokens
            self.prefix = nn.Parameter(torch.randn(1, 1 + registers, 8))
            self.block = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU())
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            tokens = self.patch(nn.functional.unfold(x, 3, stride=3).transpose(1, 2))
            tokens = torch.cat([self.prefix.expand(len(x), -1, -1), tokens], dim=1)
            return self.head(self.block(tokens)[:, 0])

    torch.manual_seed(0)
    for registers in (0, 4):
        vit = TinyViT(registers)
        got = camkit.explain(vit, x, "gradcam", "block", size="layer", normalize="none")
        assert got.cams.shape == (3, 4, 4)
    got = camkit.explain(vit, x, "gradcam", "block", grid=(2, 8), prefix_tokens=5)
    assert got.cams.shape == (3, 12, 12)
    # no attention: the patches never reach the class token, so no layer is reached by the
    # score and the automatic choice falls back to the last token layer
    assert camkit.explain(TinyViT(), x).layers == ("block",)


class Concatenating(nn.Module):
    """conv a, conv b on a, then [a, b] concatenated: b's prefix tensor a cannot broadcast."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        a = self.a(x)
        return self.fc(torch.cat([a, self.b(a)], dim=1).mean((2, 3)))


def test_ablation_before_a_concatenation_runs_copies_of_the_input(x):
    torch.manual_seed(0)
    model = Concatenating().eval()
    got = camkit.explain(model, x, "ablationcam", "b", target=[0, 1, 2], **RAW)
    assert "b" in camkit.AblationCAM(model, "b").provider._facts.repeats_prefix
    with torch.no_grad():  # by hand: zero each channel of b, run the head
        a = model.a(x)
        b = model.b(a)

        def head(b_out):
            return model.fc(torch.cat([a, b_out], 1).mean((2, 3)))[torch.arange(3), [0, 1, 2]]

        base = head(b)
        weights = torch.stack(
            [(base - head(b * (torch.arange(4) != k)[None, :, None, None])) / base
             for k in range(4)], 1,
        )  # fmt: skip
        expected = (weights[:, :, None, None] * b).sum(1).numpy()
    np.testing.assert_allclose(got.cams, expected, atol=1e-5)


def test_bfloat16_masked_passes_agree_with_float32(model, x):
    full = camkit.explain(model, x, "scorecam", "conv2", target=[0, 3, 1])
    half = camkit.explain(model, x, "scorecam", "conv2", target=[0, 3, 1], precision="bfloat16")
    for a, b in zip(full.cams, half.cams, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_a_failing_masked_pass_leaves_the_model_as_found(model, x):
    class FailsOnLargeBatches(SmallCNN):
        def forward(self, x):
            features = self.relu2(self.conv2(self.relu1(self.conv1(x))))
            if features.shape[0] > 3:
                raise RuntimeError("out of memory (simulated)")
            return self.fc(torch.flatten(self.pool(features), 1))

    torch.manual_seed(0)
    failing = FailsOnLargeBatches()
    failing.train()
    before = snapshot(failing)
    for method in ("scorecam", "ablationcam"):
        with pytest.raises(camkit.ModelError, match="simulated") as caught:
            camkit.explain(failing, x, method, "conv2", batch_size=8)
        assert isinstance(caught.value.__cause__, RuntimeError)  # chained to the model's error
        assert_unchanged(before, failing)
        assert torch.is_grad_enabled()
    # only a contiguity error makes camkit fall back to contiguous inputs, not any error
    assert not camkit.ScoreCAM(failing, "conv2").provider._facts.needs_contiguous_inputs


@pytest.mark.parametrize(("method", "options"), [
    ("sscam", {"samples": 3, "noise": 0.5}),
    ("smoothgradcam++", {"samples": 3, "noise": 0.3}),
])  # fmt: skip
def test_seeded_noise_depends_on_neither_batch_size_nor_batch(model, x, method, options):
    """Noise is drawn per (channel, repeat), so batch_size changes memory only and an image
    gets the same map alone as inside a batch (before: correlation 0.79 between batch sizes)."""
    model.eval()
    explain = functools.partial(camkit.explain, model, method=method, layer="conv2", seed=7,
                                **options)  # fmt: skip
    batch = explain(x, target=[1, 2, 3]).cams
    alone = explain(x[2:], target=[3]).cams
    np.testing.assert_allclose(alone[0], batch[2], atol=1e-5)
    if method == "sscam":
        for batch_size in (1, 7, 96):
            np.testing.assert_allclose(explain(x, target=[1, 2, 3], batch_size=batch_size).cams,
                                       batch, atol=1e-5)  # fmt: skip
    other_seed = explain(x, target=[1, 2, 3], seed=8).cams
    assert np.abs(other_seed - batch).max() > 1e-3  # the noise is there


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_stay_on_the_device(model, x):
    model, x = model.cuda(), x.cuda()
    method = camkit.GradCAM(model, "conv2")
    inputs = camkit.provider.ModelInputs(x)
    capture = method.provider.capture(inputs, ["conv2"], targets.ClassTarget(), gradients=True)
    assert capture.activations[0].is_cuda and capture.gradients[0].is_cuda
    got = method(x)
    scored = camkit.ScoreCAM(model, "conv2").provider.forward_scores(
        inputs, targets.ClassTarget(), precision="float32"
    )
    assert scored.scores.is_cuda
    on_gpu = {m: camkit.explain(model, x, m, "conv2").cams for m in ("scorecam", "ablationcam")}
    model, x = model.cpu(), x.cpu()
    expected = camkit.explain(model, x, layer="conv2").cams
    np.testing.assert_allclose(got.cams, expected, atol=1e-4)
    for method_name, cams in on_gpu.items():
        np.testing.assert_allclose(cams, camkit.explain(model, x, method_name, "conv2").cams,
                                   atol=1e-4)  # fmt: skip


def test_one_call_explain_probes_the_automatic_layer_once(model, x):
    forwards = []
    handle = model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        for _ in range(3):
            camkit.explain(model, x)
    finally:
        handle.remove()
    # one probe of the layers, one capture of one sample that chooses among them, then one
    # capture per call
    assert len(forwards) == 2 + 3


def test_camkit_keeps_no_model_alive(x):
    import gc
    import weakref

    model = SmallCNN()
    camkit.explain(model, x)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_masked_passes_fall_back_to_contiguous_inputs(x):
    class Flattening(nn.Module):  # view() needs the contiguous layout of its input
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(3 * 12 * 12, 4)

        def forward(self, x):
            return self.fc(x.view(x.shape[0], -1)) + self.conv(x).mean((1, 2, 3))[:, None]

    torch.manual_seed(0)
    model = Flattening()
    got = camkit.explain(model, x, "scorecam", "conv", target=1, **RAW)
    assert camkit.ScoreCAM(model, "conv").provider._facts.needs_contiguous_inputs
    with torch.no_grad():
        a = model.conv(x)
        masks = camkit._ops.normalize_minmax(a.reshape(-1, 12, 12)).reshape(3, 4, 1, 12, 12)
        probabilities = torch.softmax(model((x[:, None] * masks).reshape(12, 3, 12, 12)), 1)
        weights = probabilities[:, 1].reshape(3, 4)
    np.testing.assert_allclose(got.cams, (weights[:, :, None, None] * a).sum(1), atol=1e-5)


def test_a_model_on_the_meta_device_is_refused_before_any_work():
    model = SmallCNN().to("meta")
    with pytest.raises(camkit.InputError, match="on the meta device.*to_empty"):
        camkit.explain(model, torch.empty(1, 3, 8, 8, device="meta"))
