"""Detection: a target scoring a detector's predictions against given boxes.

A reference box ``b`` (with an optional class ``l_b``) is scored against the model's
predictions ``j``, each a box ``p_j``, a class ``c_j`` (its top class) and that class's score
``s_j``, by the rule of pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``:

``j* = argmax_j IoU(b, p_j)``;
``S_b = IoU(b, p_j*) + s_j*`` if ``IoU(b, p_j*) > iou_threshold`` and (where ``l_b`` is given)
``c_j* = l_b``, else ``S_b = 0``.

The map explains ``S = sum_b S_b`` (one map per sample) or, with ``per_box``, each ``S_b``
(one map per box). Gradients reach both the matched prediction's score and, through the IoU, its
box. Three output forms are read:

- per-image dicts (torchvision): a list with one mapping per image of ``boxes`` ``(M, 4)``,
  ``labels`` ``(M,)`` and ``scores`` ``(M,)``, or one mapping of them batched ``(N, M, ...)``;
  boxes ``xyxy`` by default;
- DETR (Hugging Face and others): ``logits`` ``(N, Q, C + 1)`` and ``pred_boxes`` ``(N, Q, 4)``,
  the last class "no object"; ``c_j`` and ``s_j`` from ``softmax(logits)`` without it; boxes
  ``cxcywh`` by default (DETR's are normalized to ``[0, 1]``);
- dense (YOLO): an array ``(N, A, 4 + C)`` or ``(N, 4 + C, A)``, each anchor a box then its
  class scores (as the model outputs them, probabilities for YOLOv8); boxes ``cxcywh`` by
  default.

Reference boxes are in the predictions' coordinates and ``box_format``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, NamedTuple, get_args

import numpy as np

from ._errors import InputError, TargetError
from ._namespace import array_namespace, device
from ._targets import ScoredTarget, Target, _host_values

__all__ = ["BoxFormat", "BoxTarget", "box_iou", "to_xyxy"]

Array = Any
#: ``"xyxy"`` corners ``(x1, y1, x2, y2)``; ``"cxcywh"`` centre and size; ``"xywh"`` the
#: top-left corner and size (COCO).
BoxFormat = Literal["xyxy", "cxcywh", "xywh"]


def to_xyxy(boxes: Array, box_format: BoxFormat) -> Array:
    """``(..., 4)`` boxes in ``box_format`` as corners ``(x1, y1, x2, y2)``."""
    if box_format == "xyxy":
        return boxes
    xp = array_namespace(boxes)
    a, b, c, d = (boxes[..., i] for i in range(4))
    if box_format == "cxcywh":
        return xp.stack([a - c / 2, b - d / 2, a + c / 2, b + d / 2], axis=-1)
    return xp.stack([a, b, a + c, b + d], axis=-1)


def _positive(x: Array) -> Array:
    xp = array_namespace(x)
    return xp.where(x > 0, x, xp.zeros_like(x))


def box_iou(first: Array, second: Array) -> Array:
    """Intersection over union of corner boxes, ``(n, B, 4), (n, M, 4) -> (n, B, M)``; 0 where
    the union is empty (so neither value nor gradient is ever NaN)."""
    xp = array_namespace(first, second)
    a, b = first[:, :, None, :], second[:, None, :, :]
    width = _positive(xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0], b[..., 0]))
    height = _positive(xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1], b[..., 1]))
    inter = width * height
    area_a = _positive(a[..., 2] - a[..., 0]) * _positive(a[..., 3] - a[..., 1])
    area_b = _positive(b[..., 2] - b[..., 0]) * _positive(b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    some = union > 0
    return xp.where(some, inter / xp.where(some, union, xp.ones_like(union)), xp.zeros_like(union))


class _Predictions(NamedTuple):
    """A detector's predictions: boxes ``(n, M, 4)``, top classes ``(n, M)`` and their scores
    ``(n, M)``; or, per image (``M`` varying), lists of one ``(M_n, ...)`` array per image."""

    boxes: Array
    labels: Array
    scores: Array


def _field(outputs: Any, name: str) -> Any:
    """``outputs[name]`` or ``outputs.name`` (a dict, a Hugging Face ``ModelOutput``), else
    ``None``."""
    found = outputs.get(name) if isinstance(outputs, Mapping) else None
    return getattr(outputs, name, None) if found is None else found


def _top_class(class_scores: Array) -> tuple[Array, Array]:
    """Each prediction's top class and its score, from ``(n, M, C)`` scores."""
    xp = array_namespace(class_scores)
    return xp.astype(xp.argmax(class_scores, axis=-1), xp.int32), xp.max(class_scores, axis=-1)


@dataclass(frozen=True)
class BoxTarget(Target):
    """Scores of a detector's predictions matched to given boxes (see the module's rule).

    Args:
        boxes: reference boxes ``(B, 4)`` for every sample or ``(N, B, 4)`` per sample, in the
            predictions' coordinates; rows of NaN are padding (score 0), so samples may have
            fewer boxes than ``B``.
        labels: their classes ``(B,)`` or ``(N, B)``, a prediction matching only a box of its
            own class; ``None`` (or ``-1``) matches any class.
        box_format: the format of both the references and the predictions; ``None``: ``xyxy``
            for per-image dicts, ``cxcywh`` for DETR and dense outputs.
        iou_threshold: the IoU a match must exceed.
        per_box: one map per box, ``(N, B)`` scores with the matched class as index (``-1``
            where unmatched), rather than one map of their sum.
        anchor_axis: for dense outputs, the axis of the anchors (1: ``(N, A, 4 + C)``, 2:
            ``(N, 4 + C, A)``); ``None`` takes the longer one.
    """

    boxes: Any = field(repr=False)
    labels: Any = field(default=None, repr=False)
    box_format: BoxFormat | None = None
    iou_threshold: float = 0.5
    per_box: bool = False
    anchor_axis: int | None = None
    raw_outputs: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.box_format is not None and self.box_format not in get_args(BoxFormat):
            raise InputError(
                f"BoxTarget.box_format={self.box_format!r} is not valid; use 'xyxy', 'cxcywh' "
                "or 'xywh' (or None for the output form's own)"
            )
        threshold = self.iou_threshold
        if (
            not isinstance(threshold, numbers.Real)
            or isinstance(threshold, bool)
            or not (0 <= threshold < 1)
        ):
            raise InputError(
                f"BoxTarget.iou_threshold={self.iou_threshold!r} is not valid; use a number in "
                "[0, 1)"
            )
        if self.anchor_axis not in (None, 1, 2):
            raise InputError(
                f"BoxTarget.anchor_axis={self.anchor_axis!r} is not valid; use 1 for (N, A, 4 + C) "
                "outputs, 2 for (N, 4 + C, A), or None for the longer axis"
            )
        if self.boxes is None:  # a static target while a compiler traces its data
            return
        boxes = np.asarray(_host_values(self.boxes), np.float32)
        if boxes.ndim not in (2, 3) or boxes.shape[-1] != 4 or not boxes.shape[-2]:
            raise InputError(
                f"BoxTarget.boxes has shape {boxes.shape}; give (B, 4) boxes for every sample, "
                "or (N, B, 4) per sample"
            )
        object.__setattr__(self, "boxes", boxes)
        if self.labels is not None:
            labels = np.asarray(_host_values(self.labels))
            if labels.dtype.kind not in "iu" or labels.shape != boxes.shape[:-1]:
                raise InputError(
                    f"BoxTarget.labels has shape {labels.shape} ({labels.dtype}); give one class "
                    f"(an int) per box, shape {boxes.shape[:-1]}, or None for any class"
                )
            object.__setattr__(self, "labels", labels.astype(np.int32))

    def arrays(self, count: int) -> dict[str, np.ndarray]:
        boxes = self._per_sample(self.boxes, count)
        if self.labels is None:
            return {"boxes": boxes, "labels": np.full(boxes.shape[:2], -1, np.int32)}
        return {"boxes": boxes, "labels": self._per_sample(self.labels, count)}

    def take(self, rows: np.ndarray) -> Target:
        if self.boxes.ndim == 2:
            return self
        labels = None if self.labels is None else self.labels[rows]
        return replace(self, boxes=self.boxes[rows], labels=labels)

    def _per_sample(self, values: np.ndarray, count: int) -> np.ndarray:
        """Boxes or labels given for every sample as ``(count, B, ...)``; given per sample,
        checked against ``count``."""
        if self.boxes.ndim == 2:
            return np.repeat(values[None], count, axis=0)  # a writable copy: frameworks share it
        if values.shape[0] != count:
            raise TargetError(
                f"BoxTarget has boxes for {values.shape[0]} samples but the batch has {count}; "
                "give (B, 4) boxes for all samples, or (N, B, 4) per sample"
            )
        return values

    def resolve(self, outputs: Any) -> ScoredTarget:
        predictions, box_format = self._read(outputs)
        boxes = predictions.boxes
        first = boxes[0] if isinstance(boxes, list) else boxes
        xp, where = array_namespace(first), device(first)
        count = len(boxes) if isinstance(boxes, list) else boxes.shape[0]
        references, labels = self.boxes, self.labels
        if isinstance(references, np.ndarray):  # host data; a compiler passes (N, B, ...) arrays
            fields = self.arrays(count)
            references, labels = (
                xp.asarray(fields[name], device=where) for name in ("boxes", "labels")
            )
        # padding rows of NaN become empty boxes: no NaN may reach a gradient, even unselected
        valid = xp.all(xp.isfinite(references), axis=-1)
        references = to_xyxy(
            xp.where(valid[..., None], references, xp.zeros_like(references)), box_format
        )
        if isinstance(boxes, list):  # per-image predictions, M varying: one image at a time
            parts = [
                _match(
                    references[n : n + 1], labels[n : n + 1], valid[n : n + 1],
                    _Predictions(*(field[n][None] for field in predictions)),
                    box_format, self.iou_threshold,
                )
                for n in range(count)
            ]  # fmt: skip
            scores = xp.concat([score for score, _ in parts], axis=0)
            classes = xp.concat([label for _, label in parts], axis=0)
        else:
            scores, classes = _match(
                references, labels, valid, predictions, box_format, self.iou_threshold
            )
        if self.per_box:
            return ScoredTarget(scores, classes)
        return ScoredTarget(xp.sum(scores, axis=1), None)

    def _read(self, outputs: Any) -> tuple[_Predictions, BoxFormat]:
        """The predictions in ``outputs`` and the box format they are in."""
        logits, pred_boxes = _field(outputs, "logits"), _field(outputs, "pred_boxes")
        if pred_boxes is not None and logits is not None:
            xp = array_namespace(logits)
            shifted = xp.exp(logits - xp.max(logits, axis=-1, keepdims=True))
            probabilities = shifted / xp.sum(shifted, axis=-1, keepdims=True)
            return _Predictions(pred_boxes, *_top_class(probabilities[..., :-1])), (
                self.box_format or "cxcywh"
            )
        if _field(outputs, "boxes") is not None:  # one mapping, batched
            return self._dict_predictions([outputs])[0], self.box_format or "xyxy"
        if isinstance(outputs, Sequence) and outputs and all(
            _field(item, "boxes") is not None for item in outputs
        ):  # fmt: skip
            per_image = self._dict_predictions(list(outputs))
            return _Predictions(*map(list, zip(*per_image, strict=True))), (
                self.box_format or "xyxy"
            )
        if hasattr(outputs, "shape") and len(outputs.shape) == 3:
            return self._dense(outputs), self.box_format or "cxcywh"
        raise TargetError(
            f"BoxTarget cannot read the model's outputs ({type(outputs).__name__}"
            f"{'' if not hasattr(outputs, 'shape') else f' of shape {tuple(outputs.shape)}'}): "
            "it reads a list of per-image dicts with boxes, labels and scores, DETR-style logits "
            "and pred_boxes, or a dense (N, anchors, 4 + classes) array; for other outputs pass "
            "target= a callable in the model's framework"
        )

    @staticmethod
    def _dict_predictions(items: list[Any]) -> list[_Predictions]:
        found = []
        for item in items:
            missing = [name for name in ("labels", "scores") if _field(item, name) is None]
            if missing:
                raise TargetError(
                    f"BoxTarget: the model's detections have boxes but no {missing[0]!r}; "
                    "per-image dicts need boxes, labels and scores"
                )
            found.append(_Predictions(_field(item, "boxes"), _field(item, "labels"),
                                      _field(item, "scores")))  # fmt: skip
        return found

    def _dense(self, outputs: Array) -> _Predictions:
        xp = array_namespace(outputs)
        axis = self.anchor_axis
        if axis is None:
            if outputs.shape[1] == outputs.shape[2]:
                raise TargetError(
                    f"BoxTarget cannot tell the anchors' axis of outputs of shape "
                    f"{tuple(outputs.shape)}; pass anchor_axis=1 for (N, A, 4 + C) or 2 for "
                    "(N, 4 + C, A)"
                )
            axis = 1 if outputs.shape[1] > outputs.shape[2] else 2
        rows = outputs if axis == 1 else xp.permute_dims(outputs, (0, 2, 1))  # (N, A, 4 + C)
        if rows.shape[2] < 5:
            raise TargetError(
                f"BoxTarget: dense outputs of shape {tuple(outputs.shape)} have "
                f"{rows.shape[2]} values per anchor; they need 4 box values and at least one "
                "class score"
            )
        return _Predictions(rows[..., :4], *_top_class(rows[..., 4:]))


def _match(
    references: Array, labels: Array, valid: Array, predictions: _Predictions,
    box_format: BoxFormat, threshold: float,
) -> tuple[Array, Array]:  # fmt: skip
    """Each reference box's score and matched class, ``(n, B)`` each, by the module's rule."""
    xp = array_namespace(references)
    count, boxes = references.shape[0], references.shape[1]
    if predictions.boxes.shape[1] == 0:  # no detections: 0, still on the model's graph
        nothing = xp.sum(xp.astype(predictions.scores, xp.float32), axis=1)[:, None]
        zeros = xp.zeros((count, boxes), dtype=xp.float32, device=device(references))
        return (
            nothing + zeros,
            xp.full((count, boxes), -1, dtype=xp.int32, device=device(references)),
        )
    overlap = box_iou(references, to_xyxy(xp.astype(predictions.boxes, xp.float32), box_format))
    best = xp.argmax(overlap, axis=2)  # (n, B)
    positions = xp.arange(overlap.shape[2], device=device(references))
    chosen = positions[None, None, :] == xp.astype(best, positions.dtype)[:, :, None]
    hot = xp.astype(chosen, overlap.dtype)
    best_overlap = xp.sum(overlap * hot, axis=2)
    scores = xp.astype(predictions.scores, overlap.dtype)
    best_score = xp.sum(scores[:, None, :] * hot, axis=2)
    classes = xp.astype(predictions.labels, xp.int32)[:, None, :]
    best_class = xp.sum(xp.where(chosen, classes, xp.zeros_like(classes)), axis=2)
    matched = valid & (best_overlap > threshold) & ((labels < 0) | (best_class == labels))
    return (
        xp.where(matched, best_overlap + best_score, xp.zeros_like(best_overlap)),
        xp.where(matched, best_class, xp.full_like(best_class, -1)),
    )
