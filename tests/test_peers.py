"""Differential tests: camkit against torchcam and captum on the same model, layer and targets.

Maps are compared after the same per-map min-max normalization at the layer's own resolution.
Where a peer departs from the paper, the test shows the departure and the paper's formula is
checked by hand instead (tests/test_methods_math.py).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchcam_methods = pytest.importorskip("torchcam.methods")

from test_torch import SmallCNN  # noqa: E402

import camkit  # noqa: E402
from camkit import _ops  # noqa: E402
from camkit.provider import ModelInputs  # noqa: E402

TARGETS = [0, 3, 1, 4]


@pytest.fixture
def model():
    torch.manual_seed(0)
    # not in place: peers hook module outputs, which a following in-place ReLU would overwrite
    return SmallCNN(inplace=False).eval()


@pytest.fixture
def x():
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def torchcam_maps(extractor_cls, model, x, layer, **kwargs):
    extractor = extractor_cls(model, target_layer=layer, **kwargs)
    try:
        scores = model(x)
        (maps,) = extractor(class_idx=TARGETS, scores=scores)
    finally:
        extractor.remove_hooks()
    return maps.detach().numpy()


def camkit_maps(model, x, method, layer, **options):
    return camkit.explain(model, x, method, layer, target=TARGETS, size="layer", **options).cams


@pytest.mark.parametrize(
    ("method", "peer", "layer"),
    [
        ("gradcam", "GradCAM", "conv2"),
        ("gradcam", "GradCAM", "relu1"),
        ("xgradcam", "XGradCAM", "relu2"),
        ("layercam", "LayerCAM", "conv2"),
        ("layercam", "LayerCAM", "relu1"),
    ],
)
def test_against_torchcam(model, x, method, peer, layer):
    expected = torchcam_maps(getattr(torchcam_methods, peer), model, x, layer)
    np.testing.assert_allclose(camkit_maps(model, x, method, layer), expected, atol=1e-4)


def test_cam_against_torchcam(model, x):
    expected = torchcam_maps(torchcam_methods.CAM, model, x, "relu2", fc_layer="fc")
    np.testing.assert_allclose(camkit_maps(model, x, "cam", "relu2"), expected, atol=1e-4)


def test_torchcam_gradcampp_departs_from_the_paper(model, x):
    """torchcam 0.5 divides alpha in place through a boolean-mask index (``alpha[i][mask].div_``),
    which writes into a copy, so the division is lost: its maps lie within 0.03 of the
    numerator-only weights ``sum_ij g^2 ReLU(g)`` and about 0.3 from eq. 19 (measured here).
    camkit follows eq. 19, checked by hand in test_methods_math.py."""
    peer = torchcam_maps(torchcam_methods.GradCAMpp, model, x, "conv2")
    capture = camkit.GradCAM(model, "conv2").provider.capture(
        ModelInputs(x), ["conv2"], camkit.targets.ClassTarget(TARGETS), gradients=True
    )
    a, g = capture.activations[0], capture.gradients[0]
    numerator_only = ((g**2 * torch.relu(g)).sum((2, 3), keepdim=True) * a).sum(1)
    numerator_only = _ops.normalize_minmax(torch.relu(numerator_only)).numpy()
    assert np.abs(peer - numerator_only).max() < 0.05
    paper = camkit_maps(model, x, "gradcam++", "conv2")
    assert np.abs(paper - peer).max() > 0.2


def test_against_captum_layer_gradcam(model, x):
    captum_attr = pytest.importorskip("captum.attr")
    attributions = captum_attr.LayerGradCam(model, model.conv2).attribute(
        x, target=TARGETS, relu_attributions=True
    )
    expected = _ops.normalize_minmax(attributions[:, 0].detach()).numpy()
    np.testing.assert_allclose(camkit_maps(model, x, "gradcam", "conv2"), expected, atol=1e-4)


def test_upsampled_maps_agree_with_torchcam_resized_by_torch(model, x):
    expected = torchcam_maps(torchcam_methods.GradCAM, model, x, "conv2")
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(expected)[:, None], size=(16, 16), mode="bilinear", align_corners=False
    )[:, 0]
    expected = _ops.normalize_minmax(resized).numpy()
    got = camkit.explain(model, x, "gradcam", "conv2", target=TARGETS).cams
    np.testing.assert_allclose(got, expected, atol=1e-4)


# -- the Score-CAM family ------------------------------------------------------------------
# torchcam weights channels by a softmax over channels of the logit increase (camkit's
# weighting="channel-softmax", checked by hand in test_perturbation.py) where the paper takes
# the class's softmax probability. On relu1, at the input's resolution, masks need no resizing.


@pytest.mark.parametrize(
    ("method", "peer", "options", "peer_options"),
    [
        ("scorecam", "ScoreCAM", {}, {}),
        ("iscam", "ISCAM", {"samples": 3}, {"num_samples": 3}),
        # no noise: torchcam needs a positive std, 1e-7 is far below the tolerance
        ("sscam", "SSCAM", {"samples": 2, "noise": 0.0}, {"num_samples": 2, "std": 1e-7}),
    ],
)
def test_score_family_against_torchcam(model, x, method, peer, options, peer_options):
    expected = torchcam_maps(getattr(torchcam_methods, peer), model, x, "relu1", batch_size=7,
                             input_shape=(3, 16, 16), **peer_options)  # fmt: skip
    got = camkit_maps(model, x, method, "relu1", weighting="channel-softmax", batch_size=7,
                      **options)  # fmt: skip
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_torchcam_scorecam_normalizes_masks_before_upsampling(model, x):
    """The paper upsamples each activation map, then min-max normalizes it (as camkit does);
    torchcam normalizes at the layer's size and then upsamples, so a mask whose extreme lies
    inside the map, where bilinear samples miss it, spans less than [0, 1]. Its maps equal that
    order written out by hand."""
    peer = torchcam_maps(torchcam_methods.ScoreCAM, model, x, "conv2", input_shape=(3, 16, 16))
    capture = camkit.GradCAM(model, "conv2").provider.capture(
        ModelInputs(x), ["conv2"], camkit.targets.ClassTarget(TARGETS), gradients=False
    )
    a = capture.activations[0]
    n, c = a.shape[:2]
    masks = _ops.resize_linear(_ops.normalize_minmax(a.reshape(n * c, 8, 8)), (16, 16))
    with torch.no_grad():
        logits = model((x[:, None] * masks.reshape(n, c, 1, 16, 16)).reshape(n * c, 3, 16, 16))
    chosen = logits.reshape(n, c, -1)[torch.arange(n), :, torch.tensor(TARGETS)]
    weights = torch.softmax(chosen, dim=1)
    by_hand = _ops.normalize_minmax(torch.relu((weights[:, :, None, None] * a).sum(1))).numpy()
    np.testing.assert_allclose(peer, by_hand, atol=1e-4)
    camkit_order = camkit_maps(model, x, "scorecam", "conv2", weighting="channel-softmax")
    assert 1e-4 < np.abs(camkit_order - peer).max() < 0.2
