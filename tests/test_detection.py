"""Detection: ``BoxTarget`` on hand-built detectors of every framework and output form.

Scores are checked against the matching rule computed by hand, one box at a time, on the
model's plain outputs; per-box maps against one call per box.
"""

from __future__ import annotations

import numpy as np
import pytest
from detectors import (
    CLASSES,
    IMAGES,
    hand_scores,
    keras_detector,
    nnx_detector,
    predictions,
    torch_detector,
    torch_images,
)
from model_kinds import keras_on_tensorflow

import camkit
from camkit import targets
from camkit._boxes import box_iou, to_xyxy

FORMS = ["dense", "detr", "dicts"]
#: The box format each form's predictions (and so the references) are in.
FORMAT = {"dense": "cxcywh", "detr": "cxcywh", "dicts": "xyxy"}


def _detector(framework, form):
    if framework == "torch":
        pytest.importorskip("torch")
        model = torch_detector(form)
        images = torch_images()
        with __import__("torch").no_grad():
            outputs = model(images)
        return model, images, outputs
    if framework == "keras":
        keras_on_tensorflow()
        model = keras_detector(form)
    else:
        pytest.importorskip("flax")
        model = nnx_detector(form)
    return model, IMAGES, model(IMAGES)


def _references(per_image, form):
    """Per image: its most confident prediction's box nudged, with its class; the same with any
    class; the same with another class (no match); a box far from everything (no match)."""
    step, far = (0.01, [5.0, 5.0, 0.1, 0.1]) if form == "detr" else (0.3, [90.0, 90.0, 94.0, 94.0])
    boxes, labels = [], []
    for predicted, classes, confidence in per_image:
        j = int(np.argmax(confidence))
        nudged = predicted[j] + step
        boxes.append([nudged, nudged, nudged, far])
        labels.append([classes[j], -1, (classes[j] + 1) % CLASSES, -1])
    return np.array(boxes, np.float32), np.array(labels)


@pytest.fixture(
    params=[(f, form) for f in ("torch", "keras", "nnx") for form in FORMS],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def case(request):
    framework, form = request.param
    model, images, outputs = _detector(framework, form)
    per_image = predictions(outputs, form)
    boxes, labels = _references(per_image, form)
    return model, images, form, per_image, boxes, labels


def test_scores_follow_the_rule_computed_by_hand(case):
    model, images, form, per_image, boxes, labels = case
    expected, classes = hand_scores(per_image, boxes.astype(np.float64), labels, FORMAT[form])
    assert (expected[:, :2] > 1).all() and (expected[:, 2:] == 0).all()  # the premise
    per_box = camkit.explain(
        model, images, "gradcam", "backbone", target=targets.BoxTarget(boxes, labels, per_box=True)
    )
    np.testing.assert_allclose(per_box.scores, expected, rtol=1e-5, atol=1e-6)
    assert per_box.targets.tolist() == classes.tolist()
    assert per_box.cams.shape == (2, 4, 16, 16)
    summed = camkit.explain(
        model, images, "gradcam", "backbone", target=targets.BoxTarget(boxes, labels)
    )
    np.testing.assert_allclose(summed.scores, expected.sum(1), rtol=1e-5)
    assert summed.targets.tolist() == [-1, -1] and summed.cams.shape == (2, 16, 16)


#: Besides Grad-CAM, each form runs one other method: a per-position gradient, the masked passes
#: (the whole batch per pass), the ablated layer (one sample, rows replaced).
OTHER = {"dense": "scorecam", "detr": "layercam", "dicts": "ablationcam"}


@pytest.mark.parametrize("which", ["gradcam", "other"])
def test_per_box_maps_equal_one_call_per_box(case, which):
    model, images, form, _, boxes, labels = case
    method = OTHER[form] if which == "other" else which
    options = {"batch_size": 8} if method in ("scorecam", "ablationcam") else {}
    per_box = camkit.explain(
        model,
        images,
        method,
        "backbone",
        target=targets.BoxTarget(boxes, labels, per_box=True),
        **options,
    )
    for b in range(boxes.shape[1]):
        one = camkit.explain(
            model,
            images,
            method,
            "backbone",
            target=targets.BoxTarget(boxes[:, b : b + 1], labels[:, b : b + 1]),
            **options,
        )
        np.testing.assert_allclose(per_box.cams[:, b], one.cams, atol=1e-5)
    # a box no prediction matches has no gradient: an empty map
    if method in ("gradcam", "layercam"):
        assert (per_box.cams[:, 2:] == 0).all() and (per_box.cams[:, :2].max((1, 2, 3)) > 0).all()


def test_padding_rows_score_nothing_and_make_no_nan(case):
    model, images, _, _, boxes, labels = case
    padded = boxes.copy()
    padded[1, 0] = np.nan  # sample 1 has one box fewer
    result = camkit.explain(
        model,
        images,
        "gradcam++",
        "backbone",
        target=targets.BoxTarget(padded, labels, per_box=True),
    )
    assert result.scores[1, 0] == 0 and result.targets[1, 0] == -1
    assert np.isfinite(result.cams).all()


def test_iou_and_formats_by_hand():
    # (0, 0, 2, 2) and (1, 1, 3, 3) overlap on 1x1: IoU = 1 / (4 + 4 - 1) = 1/7
    first = np.array([[[0, 0, 2, 2]]], np.float32)
    second = np.array([[[1, 1, 3, 3], [5, 5, 6, 6], [0, 0, 0, 0]]], np.float32)
    np.testing.assert_allclose(box_iou(first, second), [[[1 / 7, 0, 0]]], rtol=1e-6)
    # centre (2, 3), size (4, 2) -> corners (0, 2, 4, 4)
    # top-left (1, 1), size (2, 3) -> corners (1, 1, 3, 4)
    np.testing.assert_allclose(to_xyxy(np.array([2.0, 3, 4, 2]), "cxcywh"), [0, 2, 4, 4])
    np.testing.assert_allclose(to_xyxy(np.array([1.0, 1, 2, 3]), "xywh"), [1, 1, 3, 4])


def test_bad_boxes_name_the_argument():
    with pytest.raises(camkit.InputError, match=r"BoxTarget.labels has shape \(3,\)"):
        targets.BoxTarget(np.zeros((2, 4)), labels=[0, 1, 2])
    with pytest.raises(camkit.InputError, match=r"box_format='yolo'"):
        targets.BoxTarget(np.zeros((2, 4)), box_format="yolo")  # type: ignore[arg-type]
    with pytest.raises(camkit.InputError, match=r"iou_threshold=1.5"):
        targets.BoxTarget(np.zeros((2, 4)), iou_threshold=1.5)


def test_boxes_per_sample_must_match_the_batch():
    pytest.importorskip("torch")
    model = torch_detector("dense")
    with pytest.raises(camkit.TargetError, match=r"boxes for 3 samples but the batch has 2"):
        camkit.explain(
            model,
            torch_images(),
            "gradcam",
            "backbone",
            target=targets.BoxTarget(np.zeros((3, 1, 4))),
        )


def test_a_square_dense_output_asks_for_the_anchor_axis():
    torch = pytest.importorskip("torch")
    square = torch.zeros((1, 7, 7))
    with pytest.raises(camkit.TargetError, match=r"anchor_axis=1"):
        targets.BoxTarget(np.zeros((1, 4))).resolve(square)


# -- Hugging Face detectors (random small configurations, nothing downloaded) ------------------


def _hf_detector(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if name == "yolos":
        config = transformers.YolosConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            image_size=[32, 32], patch_size=8, num_detection_tokens=5, num_labels=CLASSES,
        )  # fmt: skip
        return transformers.YolosForObjectDetection(config).eval(), torch.randn(2, 3, 32, 32)
    backbone = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
        out_features=["stage4"],
    )  # fmt: skip
    config = transformers.DetrConfig(
        use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False,
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5,
        num_labels=CLASSES,
    )  # fmt: skip
    return transformers.DetrForObjectDetection(config).eval(), torch.randn(2, 3, 64, 64)


@pytest.mark.parametrize("name", ["yolos", "detr"])
def test_hugging_face_detectors_score_by_hand(name):
    torch = pytest.importorskip("torch")
    model, images = _hf_detector(name)
    with torch.no_grad():
        outputs = model(images)  # a ModelOutput with logits and pred_boxes
    per_image = predictions({k: outputs[k] for k in ("logits", "pred_boxes")}, "detr")
    boxes, labels = _references(per_image, "detr")
    expected, classes = hand_scores(per_image, boxes.astype(np.float64), labels, "cxcywh")
    # YOLOS's tokens are [class, 16 patches, 5 detection tokens]: the grid follows the class
    # token, and the detection tokens after it are dropped
    layer, options = (
        ("vit.encoder.layer.1.layernorm_before", {"grid": (4, 4), "prefix_tokens": 1})
        if name == "yolos"
        else ("model.backbone.model.encoder.stages.3", {})
    )
    result = camkit.explain(
        model,
        images,
        "gradcam",
        layer,
        target=targets.BoxTarget(boxes, labels, per_box=True),
        **options,
    )
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5, atol=1e-6)
    assert result.targets.tolist() == classes.tolist()
    if name == "yolos":  # the same map as the patch tokens cut out by hand
        by_hand = camkit.explain(
            model, images, "gradcam", layer,
            target=targets.BoxTarget(boxes, labels, per_box=True),
            layout=lambda t: t[:, 1:17].reshape(-1, 4, 4, t.shape[2]).permute(0, 3, 1, 2),
        )  # fmt: skip
        np.testing.assert_allclose(result.cams, by_hand.cams, atol=1e-6)


def test_an_image_without_detections_scores_zero_on_the_graph():
    torch = pytest.importorskip("torch")
    found = torch.tensor([[0.0, 0.0, 4.0, 4.0]], requires_grad=True)
    confidence = torch.tensor([0.9], requires_grad=True)
    outputs = [
        {"boxes": found, "labels": torch.tensor([1]), "scores": confidence},
        {"boxes": found[:0], "labels": torch.tensor([], dtype=torch.int64),
         "scores": confidence[:0]},
    ]  # fmt: skip
    scored = targets.BoxTarget([[0.0, 0.0, 4.0, 4.2]], per_box=True).resolve(outputs)
    # image 0: IoU 16 / 16.8 = 0.952 + 0.9; image 1 has nothing to match
    np.testing.assert_allclose(scored.scores.detach(), [[16 / 16.8 + 0.9], [0.0]], rtol=1e-6)
    assert scored.indices.tolist() == [[1], [-1]] and scored.scores.requires_grad
    none = targets.BoxTarget([[0.0, 0.0, 4.0, 4.2]]).resolve(outputs[1:])
    assert none.scores.tolist() == [0.0] and none.scores.requires_grad
