"""Small hand-built detectors in PyTorch, Keras and Flax NNX, emitting the three output forms
that :class:`camkit.targets.BoxTarget` reads.

Each has a convolutional backbone (layer ``backbone``, 16x16) and one of three heads:

- ``dense``: a 4x4 grid of anchors (YOLO-style), each a ``cxcywh`` box in pixels, decoded from
  the anchor's centre, then sigmoid class scores: ``(N, 4 + C, A)`` in PyTorch (YOLOv8's
  order), ``(N, A, 4 + C)`` in the channels-last frameworks;
- ``detr``: ``QUERIES`` queries from the pooled features, ``logits`` ``(N, Q, C + 1)`` (the last
  "no object") and sigmoid ``pred_boxes`` ``(N, Q, 4)``, normalized ``cxcywh``;
- ``dicts``: a list with one dict per image of ``boxes`` (``xyxy``), ``labels`` and ``scores``,
  the dense anchors' best (a different number per image in PyTorch, as after NMS; a fixed
  ``KEPT`` in Flax); in Keras one dict of them batched, ``(N, KEPT, ...)``.

:func:`predictions` reads each form back as plain per-image numpy predictions, independently of
camkit, for the hand-computed scores.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np

CLASSES = 3
QUERIES = 5
KEPT = 4
SIZE = 16
#: The anchors' centres on the 4x4 grid of the dense head, anchor ``a = 4 * row + column``.
_ROWS, _COLUMNS = np.divmod(np.arange(16), 4)
CENTRES = np.stack([(_COLUMNS + 0.5) * 4, (_ROWS + 0.5) * 4], axis=-1).astype(np.float32)
IMAGES = np.random.default_rng(5).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)


def _decode(raw: Any, ops: SimpleNamespace) -> Any:
    """``(N, A, 4 + C)`` head outputs -> ``cxcywh`` boxes in pixels and class probabilities."""
    centres = ops.constant(CENTRES)
    cx = centres[:, 0] + 2 * ops.tanh(raw[..., 0])
    cy = centres[:, 1] + 2 * ops.tanh(raw[..., 1])
    w = 4 * ops.exp(ops.tanh(raw[..., 2]))
    h = 4 * ops.exp(ops.tanh(raw[..., 3]))
    return ops.concatenate([ops.stack([cx, cy, w, h], axis=-1), ops.sigmoid(raw[..., 4:])], -1)


def _corners(boxes: Any, ops: SimpleNamespace) -> Any:
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return ops.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


# -- PyTorch ----------------------------------------------------------------------------------


def torch_detector(form: str) -> Any:
    import torch
    from torch import nn

    ops = SimpleNamespace(
        constant=torch.from_numpy,
        tanh=torch.tanh,
        exp=torch.exp,
        sigmoid=torch.sigmoid,
        stack=torch.stack,
        concatenate=torch.cat,
    )

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(2)
            self.backbone = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 4 + CLASSES, 1)
            self.queries = nn.Linear(8, QUERIES * (CLASSES + 5))

        def forward(self, x: Any) -> Any:
            features = torch.relu(self.backbone(x))
            if form == "detr":
                q = self.queries(features.mean((2, 3))).reshape(-1, QUERIES, CLASSES + 5)
                return {"logits": q[..., : CLASSES + 1], "pred_boxes": torch.sigmoid(q[..., -4:])}
            grid = self.head(nn.functional.avg_pool2d(features, 4))  # (N, 4 + C, 4, 4)
            rows = _decode(grid.flatten(2).transpose(1, 2), ops)  # (N, A, 4 + C)
            if form == "dense":
                return rows.transpose(1, 2)  # (N, 4 + C, A), as YOLOv8
            scores, labels = rows[..., 4:].max(-1)
            detections = []
            for n in range(rows.shape[0]):  # as after NMS: a different number per image
                kept = scores[n].argsort(descending=True)[: KEPT - 1 + n]
                detections.append(
                    {
                        "boxes": _corners(rows[n, kept, :4], ops),
                        "labels": labels[n, kept],
                        "scores": scores[n, kept],
                    }
                )
            return detections

    return Detector().eval()


def torch_images() -> Any:
    import torch

    return torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())


# -- Keras ------------------------------------------------------------------------------------


def keras_detector(form: str) -> Any:
    import keras

    ops = SimpleNamespace(
        constant=keras.ops.convert_to_tensor,
        tanh=keras.ops.tanh,
        exp=keras.ops.exp,
        sigmoid=keras.ops.sigmoid,
        stack=keras.ops.stack,
        concatenate=keras.ops.concatenate,
    )

    class Detector(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            keras.utils.set_random_seed(2)
            self.backbone = keras.layers.Conv2D(
                8, 3, padding="same", activation="relu", name="backbone"
            )
            self.pool = keras.layers.AveragePooling2D(4)
            self.head = keras.layers.Conv2D(4 + CLASSES, 1, name="head")
            self.queries = keras.layers.Dense(QUERIES * (CLASSES + 5), name="queries")

        def call(self, x: Any) -> Any:
            features = self.backbone(x)
            if form == "detr":
                pooled = keras.ops.mean(features, axis=(1, 2))
                q = keras.ops.reshape(self.queries(pooled), (-1, QUERIES, CLASSES + 5))
                return {
                    "logits": q[..., : CLASSES + 1],
                    "pred_boxes": keras.ops.sigmoid(q[..., -4:]),
                }
            grid = self.head(self.pool(features))  # (N, 4, 4, 4 + C)
            rows = _decode(keras.ops.reshape(grid, (-1, 16, 4 + CLASSES)), ops)
            if form == "dense":
                return rows  # (N, A, 4 + C)
            scores = keras.ops.max(rows[..., 4:], axis=-1)
            labels = keras.ops.argmax(rows[..., 4:], axis=-1)
            top, kept = keras.ops.top_k(scores, KEPT)
            boxes = _corners(keras.ops.take_along_axis(rows[..., :4], kept[..., None], 1), ops)
            picked = keras.ops.take_along_axis(labels, kept, 1)
            # batched (N, KEPT, ...), as Keras detectors pad theirs: a graph's batch size is open
            return {"boxes": boxes, "labels": picked, "scores": top}

    model = Detector()
    with warnings.catch_warnings():  # a subclassed model built by its first call, as intended
        warnings.simplefilter("ignore", UserWarning)
        model(IMAGES)
    return model


# -- Flax NNX ---------------------------------------------------------------------------------


def nnx_detector(form: str) -> Any:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    ops = SimpleNamespace(
        constant=jnp.asarray,
        tanh=jnp.tanh,
        exp=jnp.exp,
        sigmoid=jax.nn.sigmoid,
        stack=jnp.stack,
        concatenate=jnp.concatenate,
    )

    class Detector(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.backbone = nnx.Conv(3, 8, (3, 3), rngs=rngs)
            self.head = nnx.Conv(8, 4 + CLASSES, (1, 1), rngs=rngs)
            self.queries = nnx.Linear(8, QUERIES * (CLASSES + 5), rngs=rngs)

        def __call__(self, x: Any) -> Any:
            features = jax.nn.relu(self.backbone(x))
            if form == "detr":
                q = self.queries(features.mean((1, 2))).reshape(-1, QUERIES, CLASSES + 5)
                return {"logits": q[..., : CLASSES + 1], "pred_boxes": jax.nn.sigmoid(q[..., -4:])}
            pooled = nnx.avg_pool(features, (4, 4), strides=(4, 4))
            rows = _decode(self.head(pooled).reshape(-1, 16, 4 + CLASSES), ops)
            if form == "dense":
                return rows
            scores, labels = rows[..., 4:].max(-1), rows[..., 4:].argmax(-1)
            top, kept = jax.lax.top_k(scores, KEPT)
            boxes = _corners(jnp.take_along_axis(rows[..., :4], kept[..., None], 1), ops)
            picked = jnp.take_along_axis(labels, kept, 1)
            return [
                {"boxes": boxes[n], "labels": picked[n], "scores": top[n]}
                for n in range(rows.shape[0])
            ]

    return Detector(nnx.Rngs(2))


# -- the forms, read back by hand -------------------------------------------------------------


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach()
    return np.asarray(value, dtype=np.float64)


def predictions(outputs: Any, form: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: the predicted boxes (in the form's own format), top classes and scores."""
    if form == "dicts":
        if isinstance(outputs, dict):  # batched
            outputs = [{k: v[n] for k, v in outputs.items()} for n in range(len(outputs["boxes"]))]
        return [
            (_numpy(d["boxes"]), _numpy(d["labels"]).astype(int), _numpy(d["scores"]))
            for d in outputs
        ]
    if form == "detr":
        logits = _numpy(outputs["logits"])
        probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        objects = probabilities[..., :-1]
        boxes = _numpy(outputs["pred_boxes"])
        return [(boxes[n], objects[n].argmax(-1), objects[n].max(-1)) for n in range(len(boxes))]
    rows = _numpy(outputs)
    if rows.shape[1] == 4 + CLASSES:  # (N, 4 + C, A)
        rows = rows.transpose(0, 2, 1)
    return [(r[:, :4], r[:, 4:].argmax(-1), r[:, 4:].max(-1)) for r in rows]


def corners(box: np.ndarray, box_format: str) -> np.ndarray:
    a, b, c, d = box
    return np.array(
        [a - c / 2, b - d / 2, a + c / 2, b + d / 2] if box_format == "cxcywh" else [a, b, c, d]
    )


def iou(first: np.ndarray, second: np.ndarray) -> float:
    width = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    inter = width * height
    union = (
        (first[2] - first[0]) * (first[3] - first[1])
        + (second[2] - second[0]) * (second[3] - second[1])
        - inter
    )
    return inter / union if union > 0 else 0.0


def hand_scores(
    per_image: list[Any],
    references: np.ndarray,
    labels: np.ndarray,
    box_format: str,
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """The rule, one box at a time: the prediction of highest IoU scores IoU + its score when
    the IoU exceeds the threshold and its class is the box's (``-1``: any)."""
    scores = np.zeros(references.shape[:2])
    classes = np.full(references.shape[:2], -1)
    for n, (boxes, predicted, confidence) in enumerate(per_image):
        for b, reference in enumerate(references[n]):
            if np.isnan(reference).any() or not len(boxes):
                continue
            overlaps = [iou(corners(reference, box_format), corners(p, box_format)) for p in boxes]
            j = int(np.argmax(overlaps))
            if overlaps[j] > threshold and labels[n, b] in (-1, predicted[j]):
                scores[n, b] = overlaps[j] + confidence[j]
                classes[n, b] = predicted[j]
    return scores, classes
