"""Differential tests against pytorch-grad-cam: each of its readings, offered by name, gives its
maps on the same model, layer, targets and inputs; and eigen and augmentation smoothing, which
it introduced, checked by hand on every backend.

pytorch-grad-cam's pipeline, per layer: ``ReLU``, min-max normalize at the layer's size, resize
(``cv2.resize``, half-pixel), then the mean over layers, ``ReLU`` and min-max again: camkit's
``normalize="minmax-before-resize"`` (the same as camkit's default for one layer).
"""

from __future__ import annotations

import numpy as np
import pytest
from pytorch_grad_cam_peer import load

torch = pytest.importorskip("torch")

from test_torch import SmallCNN  # noqa: E402

import camkit  # noqa: E402
from camkit import _ops  # noqa: E402
from camkit.provider import ModelInputs  # noqa: E402

TARGETS = [0, 3, 1, 4]
PEER_PIPELINE = {"normalize": "minmax-before-resize", "target": TARGETS}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return SmallCNN(inplace=False).eval()


@pytest.fixture
def x():
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))


@pytest.fixture
def peer():
    return load()


def peer_maps(peer, cls, model, layers, x, **call):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with getattr(peer, cls)(model=model, target_layers=[getattr(model, n) for n in layers]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in TARGETS], **call)


@pytest.mark.parametrize(
    ("method", "peer_cls", "layers", "options"),
    [
        ("gradcam", "GradCAM", ["conv2"], {}),
        ("gradcam", "GradCAM", ["conv1", "conv2"], {}),  # fused: the mean of normalized maps
        ("gradcam++", "GradCAMPlusPlus", ["conv2"], {"variant": "pytorch-grad-cam"}),
        ("xgradcam", "XGradCAM", ["relu2"], {}),
        ("hirescam", "HiResCAM", ["conv2"], {}),
        ("gradcam-elementwise", "GradCAMElementWise", ["conv2"], {}),
        ("layercam", "LayerCAM", ["conv1", "conv2"], {}),
        # Score-CAM: corner-aligned upsampling, a softmax over channels of the masked logits
        ("scorecam", "ScoreCAM", ["conv2"],
         {"masks": "pytorch-grad-cam", "weighting": "channel-softmax"}),
    ],
)  # fmt: skip
def test_readings_match_pytorch_grad_cam(peer, model, x, method, peer_cls, layers, options):
    expected = peer_maps(peer, peer_cls, model, layers, x)
    got = camkit.explain(model, x, method, layers, **PEER_PIPELINE, **options).cams
    # the peer divides by (max - min + 1e-7): for a layer's map spanning ~1e-3 (these small
    # weights' gradients), up to 1e-4 off a division by the span alone
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_normalizing_before_resizing_changes_only_fused_maps(model, x):
    """Min-max is affine and a linear resize keeps affine maps affine, so for one layer
    ``minmax(resize(minmax(M))) == minmax(resize(M))``; fused, each layer's affine factor
    differs before and after the resize, so the mean differs."""
    for layers, same in ((["conv2"], True), (["conv1", "conv2"], False)):
        before, after = (
            camkit.explain(model, x, "gradcam", layers, target=TARGETS, normalize=n).cams
            for n in ("minmax-before-resize", "minmax")
        )
        assert (np.abs(before - after).max() < 1e-6) == same


def test_scorecam_masks_match_torchcams_reading(model, x):
    torchcam = pytest.importorskip("torchcam.methods")
    extractor = torchcam.ScoreCAM(model, target_layer="conv2", input_shape=(3, 16, 16))
    try:
        (expected,) = extractor(class_idx=TARGETS, scores=model(x))
    finally:
        extractor.remove_hooks()
    got = camkit.explain(model, x, "scorecam", "conv2", target=TARGETS, size="layer",
                         masks="torchcam", weighting="channel-softmax").cams  # fmt: skip
    np.testing.assert_allclose(got, expected.detach().numpy(), atol=1e-4)


def captured(model, x, layer):
    capture = camkit.GradCAM(model, layer).provider.capture(
        ModelInputs(x), [layer], camkit.targets.ClassTarget(TARGETS), gradients=True
    )
    return capture.activations[0].detach().numpy(), capture.gradients[0].detach().numpy()


def assert_equal_up_to_sign(got, expected):
    """A principal direction's sign is arbitrary: each map equals the peer's or its negation."""
    for mine, theirs in zip(got, expected, strict=True):
        sign = 1.0 if np.abs(mine - theirs).max() < np.abs(mine + theirs).max() else -1.0
        np.testing.assert_allclose(mine, sign * theirs, atol=1e-4)


@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
def test_centered_eigen_readings_match_pytorch_grad_cam(peer, model, x, method):
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    a, g = captured(model, x, "conv2")
    expected = get_2d_projection(a if method == "eigencam" else g * a)
    got = camkit.explain(model, x, method, "conv2", target=TARGETS, size="layer",
                         variant="centered", normalize="none").cams  # fmt: skip
    assert_equal_up_to_sign(got, expected)
    # camkit's sign: the centred map correlates non-negatively with the channel sum
    channel_sum = (a if method == "eigencam" else g * a).sum(axis=1)
    centred = channel_sum - channel_sum.mean(axis=(1, 2), keepdims=True)
    assert ((got * centred).sum(axis=(1, 2)) >= 0).all()


@pytest.mark.parametrize(
    ("method", "peer_cls", "contributions"),
    [
        # Grad-CAM: channels weighted by the mean gradient, w_c A_c
        ("gradcam", "GradCAM", lambda a, g: g.mean(axis=(2, 3))[:, :, None, None] * a),
        ("hirescam", "HiResCAM", lambda a, g: g * a),
        ("layercam", "LayerCAM", lambda a, g: np.maximum(g, 0) * a),
    ],
)
def test_eigen_smooth_projects_the_channel_contributions(peer, model, x, method, peer_cls,
                                                         contributions):  # fmt: skip
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    a, g = captured(model, x, "conv2")
    expected = get_2d_projection(contributions(a, g))
    got = camkit.explain(model, x, method, "conv2", target=TARGETS, size="layer", relu=False,
                         normalize="none", eigen_smooth=True).cams  # fmt: skip
    assert_equal_up_to_sign(got, expected)
    # the peer's own eigen_smooth call, where its arbitrary sign happens to agree with camkit's
    with_peer = peer_maps(peer, peer_cls, model, ["conv2"], x, eigen_smooth=True)
    mine = camkit.explain(model, x, method, "conv2", eigen_smooth=True, **PEER_PIPELINE).cams
    agree = [n for n in range(len(x)) if (expected[n] * got[n]).sum() > 0]
    np.testing.assert_allclose(mine[agree], with_peer[agree], atol=2e-5)


def test_aug_smooth_matches_pytorch_grad_cam(peer, model, x):
    """pytorch-grad-cam's default views: horizontal flip or not, times factors 0.9, 1, 1.1;
    each map flipped back; the mean of the six normalized maps."""
    expected = peer_maps(peer, "GradCAM", model, ["conv2"], x, aug_smooth=True)
    got = camkit.explain(model, x, "gradcam", "conv2", aug_smooth=True, **PEER_PIPELINE)
    np.testing.assert_allclose(got.cams, expected, atol=2e-5)
    # scores and targets are those of the unaugmented inputs
    plain = camkit.explain(model, x, "gradcam", "conv2", target=TARGETS)
    np.testing.assert_array_equal(got.targets, plain.targets)
    np.testing.assert_allclose(got.scores, plain.scores, rtol=1e-6)


def test_aug_smooth_views_by_hand(model, x):
    """Two views, as and flipped (vertically), plus a 1.5x rescale of each:
    ``(M(x) + flip(M(flip x)) + R(M(R x)) + flip(R(M(R flip x)))) / 4``, where ``R`` resizes to
    24x24 and back; the top-1 class is pinned to the unaugmented input's."""
    views = camkit.Augmentations(flips=("none", "vertical"), factors=(1.0,), scales=(1.0, 1.5))
    got = camkit.explain(model, x, "gradcam", "conv2", aug_smooth=views).cams
    classes = camkit.explain(model, x, "gradcam", "conv2").targets.tolist()

    def view(image):
        return camkit.explain(model, image, "gradcam", "conv2", target=classes,
                              size=(16, 16)).cams  # fmt: skip

    big = torch.from_numpy(_ops.resize_linear(x.numpy(), (24, 24)))
    flipped, big_flipped = x.flip(-2), big.flip(-2)
    by_hand = (view(x) + view(flipped)[:, ::-1] + view(big) + view(big_flipped)[:, ::-1]) / 4
    np.testing.assert_allclose(got, by_hand, atol=1e-6)


def test_smoothing_options_are_checked(model, x):
    with pytest.raises(camkit.InputError, match="aug_smooth='yes'"):
        camkit.GradCAM(model, "conv2", aug_smooth="yes")
    with pytest.raises(camkit.InputError, match="Augmentations.factors holds -1"):
        camkit.Augmentations(factors=(1.0, -1))
    with pytest.raises(camkit.InputError, match="Augmentations.flips holds 'diagonal'"):
        camkit.Augmentations(flips=("diagonal",))
    with pytest.raises(camkit.InputError, match="Augmentations.scales=()"):
        camkit.Augmentations(scales=())
    with pytest.raises(camkit.InputError, match="eigen_smooth='maybe'"):
        camkit.GradCAM(model, "conv2", eigen_smooth="maybe")
    with pytest.raises(camkit.InputError, match="variant='centered'"):
        camkit.EigenCAM(model, "conv2", eigen_smooth=True)
    with pytest.raises(camkit.InputError, match="masks='corners'"):
        camkit.ScoreCAM(model, "conv2", masks="corners")
    boxes = camkit.targets.BoxTarget([[0, 0, 4, 4]])
    with pytest.raises(camkit.TargetError, match="BoxTarget cannot follow"):
        camkit.explain(model, x, "gradcam", "conv2", target=boxes, aug_smooth=True)


# -- every backend: smoothing lives in the core ---------------------------------------------------

from model_kinds import KIND_NAMES, framework_array, kind, same_snapshot  # noqa: E402


def native(k, channels_first):
    """A channels-first numpy batch in the kind's own layout and array type."""
    array = np.moveaxis(channels_first, 1, -1) if k.channels_last else channels_first
    return framework_array(k, np.ascontiguousarray(array, dtype=np.float32))


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_aug_smooth_by_hand_on_every_kind(kind_name):
    """Flip or not, times factors 1 and 0.5: the mean of the four views' maps, each flipped
    back, with the classes of the unaugmented inputs."""
    k = kind(kind_name)
    before = k.snapshot()
    x = np.asarray(k.inputs.numpy() if hasattr(k.inputs, "numpy") else k.inputs, np.float32)
    x = np.moveaxis(x, -1, 1) if k.channels_last else x
    views = camkit.Augmentations(factors=(1.0, 0.5))
    got = camkit.explain(k.model, k.inputs, "gradcam", k.layer, aug_smooth=views)
    classes = camkit.explain(k.model, k.inputs, "gradcam", k.layer).targets.tolist()
    by_hand = (
        sum(
            camkit.explain(
                k.model, native(k, flip(x) * factor), "gradcam", k.layer, target=classes
            ).cams[:, :, ::step]
            for flip, step in ((lambda a: a, 1), (lambda a: a[..., ::-1], -1))
            for factor in (1.0, 0.5)
        )
        / 4
    )
    np.testing.assert_allclose(got.cams, by_hand, atol=1e-5)
    assert same_snapshot(before, k.snapshot())


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_eigen_smooth_by_hand_on_every_kind(kind_name):
    """Grad-CAM's contributions ``w_c A_c`` projected on their first centred principal
    direction, from the layer's captured activations and gradients."""
    k = kind(kind_name)
    explainer = camkit.GradCAM(k.model, k.layer, relu=False, normalize="none", size="layer",
                               eigen_smooth=True)  # fmt: skip
    got = explainer(k.inputs)
    provider = explainer.provider
    target = camkit.targets.ClassTarget(got.targets.tolist())
    capture = provider.capture(ModelInputs(k.inputs), [k.layer], target, gradients=True)
    a, g = (np.asarray(provider.to_numpy(t[0])) for t in (capture.activations, capture.gradients))
    if k.channels_last:
        a, g = np.moveaxis(a, -1, 1), np.moveaxis(g, -1, 1)
    contributions = g.mean(axis=(2, 3))[:, :, None, None] * a
    expected = _ops.first_principal_projection(contributions, centered=True)
    np.testing.assert_allclose(got.cams, expected, atol=1e-5)
