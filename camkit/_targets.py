"""Targets: what score of the model's outputs a map explains.

A target turns the model's outputs into one score per sample, ``(N,)``, the quantity whose
gradients the gradient-based methods take, or ``K`` scores per sample, ``(N, K)``, for a target
with several (classes, boxes, references), each explained by its own map. Targets are written
against the Array API (through :func:`camkit.provider.array_namespace`), so autograd and tracing
(torch, JAX, TensorFlow through its shim) flow through them unchanged, on the model's device. A
plain callable is taken to be written in the model's own framework and is passed the outputs
untouched.

This module holds the base class and the single-score targets; the multi-class targets are in
``_multi``, detection in ``_boxes``, similarity in ``_similarity``, and the scoring every backend
goes through (``score_outputs``) in ``_scoring``.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np

from ._errors import InputError, TargetError
from ._namespace import array_namespace, device, take_rows

__all__ = [
    "CallableTarget",
    "ClassScore",
    "ClassTarget",
    "RegressionTarget",
    "ScoredTarget",
    "SegmentationTarget",
    "SigmoidTarget",
    "SoftmaxTarget",
    "Target",
    "class_scores",
]

Array = Any
_INT32 = np.iinfo(np.int32)
#: How a class's output is read: its raw value, its softmax probability over the classes, or
#: its own sigmoid probability (multi-label models, whose classes are independent).
ClassScore = Literal["logit", "probability", "sigmoid"]


@dataclass(frozen=True)
class ScoredTarget:
    """A target applied to a batch of outputs.

    ``scores`` is ``(N,)`` float32 in the outputs' namespace (differentiable where the outputs
    are), or ``(N, K)`` for a target with several scores per sample; ``indices``, of the same
    shape, are the integer output index (class) each score was read from (``-1`` where a score
    has none, an unmatched box), or ``None`` where no index applies (a callable target).
    """

    scores: Array
    indices: Array | None


class Target(ABC):
    """Base class of framework-neutral targets; subclass it to write your own.

    Implement :meth:`resolve`, using ``camkit.provider.array_namespace(outputs)`` for the array
    functions so that it runs on every backend, and optionally :meth:`check`, :meth:`arrays`
    and :meth:`take`. Class-like outputs arrive as one array, channels-first as activations
    are: ``(N, K)``, or ``(N, K, H, W)`` for per-pixel scores, whatever the framework's own
    layout (the ``logits`` of outputs that carry them); a target with ``raw_outputs`` gets the
    outputs as the model returns them instead.
    """

    #: Whether :meth:`resolve` is given the outputs as the model returns them (a tuple, a dict,
    #: a list of per-image dicts), untouched, rather than as one channels-first array.
    raw_outputs: ClassVar[bool] = False

    @abstractmethod
    def resolve(self, outputs: Array) -> ScoredTarget:
        """Score a batch of outputs, ``(N, ...) -> (N,)``, or ``(N, K)`` for ``K`` maps per
        sample."""

    def check(self, shape: tuple[int, ...], count: int) -> None:  # noqa: B027 - optional
        """Raise :class:`~camkit.TargetError` where this target cannot score outputs of
        ``shape`` (channels-first, as :meth:`resolve` sees them) for a batch of ``count``
        samples. It reads shapes only, never values, so it runs on the host without waiting
        for the device. The default accepts every shape."""

    def arrays(self, count: int) -> dict[str, np.ndarray]:
        """The target's per-call data as host arrays, by field name, for a batch of
        ``count``: a compiled capture takes them as inputs, so a new class index or mask
        does not compile the model again. :meth:`resolve` must accept these fields as arrays
        of the outputs' framework, and :meth:`check` must accept them as ``None`` (inside a
        compiled function it checks shapes only; the values are checked after the call). The
        default, no fields, compiles once per target value."""
        return {}

    def take(self, rows: np.ndarray) -> Target:
        """This target for a batch whose row ``b`` is sample ``rows[b]`` of the batch it was
        made for: per-sample data (an index per sample, a mask or boxes per sample) follows
        its sample. The default, for a target without per-sample data, is the target itself."""
        return self


# -- class indices -----------------------------------------------------------------------------


def _host_values(value: Any) -> Any:
    """An array of any framework as nested Python values (``tolist``), else ``value``."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return value.tolist()
    if hasattr(value, "__array__"):  # TensorFlow tensors
        return np.asarray(value).tolist()
    return value


def _is_index(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _canonical_index(index: Any, argument: str) -> int | tuple[int, ...] | None:
    """``None``, one class index or a tuple of per-sample indices, from what a user passed:
    ints, sequences or 0-d/1-d integer arrays of any framework."""
    if index is None:
        return None
    if isinstance(index, bool | np.bool_):
        raise InputError(
            f"{argument}={index!r} is a bool, not a class index; pass an int (target=1), one "
            "int per sample, or None for each sample's top-1 class"
        )
    values = _host_values(index)
    if _is_index(values):
        return int(values)
    if isinstance(values, Sequence) and not isinstance(values, str | bytes):
        if all(_is_index(v) for v in values):
            return tuple(int(v) for v in values)
        shape = np.shape(values) if not isinstance(values, str) else ()
        if len(shape) > 1:
            raise InputError(
                f"{argument}={index!r} has shape {shape}; pass one class index per sample, a "
                "1-d sequence of ints"
            )
    raise InputError(
        f"{argument}={index!r} is not a class index; pass an int, one int per sample, or None "
        "for each sample's top-1 class (a float array of class indices needs .astype(int))"
    )


def _check_indices(index: int | tuple[int, ...] | None, shape: tuple[int, ...], count: int,
                   argument: str) -> None:  # fmt: skip
    if len(shape) != 2:
        raise TargetError(
            f"{argument} needs outputs of shape (N, classes), got shape {shape}; for other "
            "outputs use camkit.targets.RegressionTarget, SegmentationTarget or a callable "
            "written in the model's framework"
        )
    _check_index_count(index, count, argument)
    if index is None:
        return
    named = {argument: index} if isinstance(index, int) else {
        f"{argument}[{n}]": i for n, i in enumerate(index)
    }  # fmt: skip
    for name, i in named.items():
        if not 0 <= i < shape[1]:
            raise TargetError(
                f"{name}={i} is out of range: the model has {shape[1]} outputs, so class "
                f"indices run from 0 to {shape[1] - 1}"
            )


def _check_index_count(index: int | tuple[int, ...] | None, count: int, argument: str) -> None:
    if isinstance(index, tuple) and len(index) != count:
        raise TargetError(
            f"{argument} has {len(index)} indices for a batch of {count} samples; give one "
            "index per sample, or a single int for all"
        )


def _index_array(index: int | tuple[int, ...] | None, count: int, argument: str) -> np.ndarray:
    """``(count,)`` int32 indices, ``-1`` for each sample's top-1; values beyond int32 (never
    valid) are clipped to it and reported by the check."""
    _check_index_count(index, count, argument)
    values = [-1] * count if index is None else [index] * count if isinstance(index, int) else index
    return np.clip(np.asarray(values, np.int64), _INT32.min, _INT32.max).astype(np.int32)


def _chosen_indices(index: Any, outputs: Array) -> Array:
    """``(N,)`` int32 indices on the outputs' device: ``index`` (an int, a tuple, or an int
    array from :meth:`Target.arrays` with ``-1`` for top-1), or each row's argmax."""
    xp = array_namespace(outputs)
    top = xp.astype(xp.argmax(outputs, axis=1), xp.int32)
    if index is None:
        return top
    if isinstance(index, int | tuple):
        return xp.asarray(_index_array(index, outputs.shape[0], "index"), device=device(outputs))
    chosen = xp.astype(index, xp.int32)
    return xp.where(chosen >= 0, chosen, top)


def _pick(values: Array, indices: Array) -> Array:
    """``values[n, indices[n]]`` ``(N,)`` for ``(N, C)`` values and ``(N,)`` indices, or
    ``values[n, indices[n, k]]`` ``(N, K)`` for ``(N, K)`` indices; 0 where an index is out of
    range (the check reports it), so a compiled capture never reads out of bounds."""
    xp = array_namespace(values)
    classes = xp.arange(values.shape[1], dtype=xp.int32, device=device(values))
    columns = indices if indices.ndim == 2 else indices[:, None]
    hot = xp.astype(classes[None, None, :] == columns[:, :, None], values.dtype)
    picked = xp.sum(values[:, None, :] * hot, axis=2)
    return picked if indices.ndim == 2 else picked[:, 0]


def class_scores(outputs: Array, score: ClassScore) -> Array:
    """``(N, K)`` class outputs read as ``score``: the outputs themselves (``"logit"``), their
    softmax over the classes (``"probability"``), or each one's sigmoid (``"sigmoid"``)."""
    xp = array_namespace(outputs)
    if score == "logit":
        return outputs
    if score == "probability":
        shifted = xp.exp(outputs - xp.max(outputs, axis=1, keepdims=True))
        return shifted / xp.sum(shifted, axis=1, keepdims=True)
    # 1 / (1 + e^-y) from e = e^-|y| <= 1: neither branch overflows, so neither gradient is NaN
    small = xp.exp(-xp.abs(outputs))
    return xp.where(outputs >= 0, 1 / (1 + small), small / (1 + small))


@dataclass(frozen=True)
class _ClassIndexTarget(Target):
    """A target reading one class per sample: ``index`` as given, checked and traced alike."""

    index: int | Sequence[int] | None = None
    #: How error messages name ``index``.
    argument: ClassVar[str] = "index"

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", _canonical_index(self.index, self.argument))

    def check(self, shape: tuple[int, ...], count: int) -> None:
        _check_indices(self.index, shape, count, self.argument)  # type: ignore[arg-type]

    def arrays(self, count: int) -> dict[str, np.ndarray]:
        return {"index": _index_array(self.index, count, self.argument)}  # type: ignore[arg-type]

    def take(self, rows: np.ndarray) -> Target:
        if not isinstance(self.index, tuple):
            return self
        return replace(self, index=tuple(self.index[int(row)] for row in rows))

    def _scores(self, outputs: Array, score: ClassScore) -> ScoredTarget:
        indices = _chosen_indices(self.index, outputs)
        return ScoredTarget(_pick(class_scores(outputs, score), indices), indices)


@dataclass(frozen=True)
class ClassTarget(_ClassIndexTarget):
    """The raw output (logit) of a class: ``S[n] = y[n, k_n]``.

    ``index`` is one class for every sample, one class per sample (a sequence or a 1-d integer
    array of any framework), or ``None`` for each sample's top-1 class. Grad-CAM and its family
    explain the pre-softmax score.
    """

    argument: ClassVar[str] = "target"

    def resolve(self, outputs: Array) -> ScoredTarget:
        return self._scores(outputs, "logit")


@dataclass(frozen=True)
class SoftmaxTarget(_ClassIndexTarget):
    """The softmax probability of a class: ``S[n] = exp(y[n, k_n]) / sum_j exp(y[n, j])``.

    ``index`` as for :class:`ClassTarget`.
    """

    argument: ClassVar[str] = "SoftmaxTarget.index"

    def resolve(self, outputs: Array) -> ScoredTarget:
        return self._scores(outputs, "probability")


@dataclass(frozen=True)
class SigmoidTarget(_ClassIndexTarget):
    """The sigmoid probability of a class, for multi-label models whose classes are independent:
    ``S[n] = 1 / (1 + exp(-y[n, k_n]))``.

    ``index`` as for :class:`ClassTarget` (``None``: each sample's highest-scoring class). Its
    gradient is the logit's times ``S (1 - S)``, one positive factor per sample, so the maps of
    methods linear in the gradients (Grad-CAM, XGradCAM, HiResCAM) equal the logit's once
    normalized; the others differ.
    """

    argument: ClassVar[str] = "SigmoidTarget.index"

    def resolve(self, outputs: Array) -> ScoredTarget:
        return self._scores(outputs, "sigmoid")


@dataclass(frozen=True)
class RegressionTarget(Target):
    """A regression output: ``S[n] = y[n, output]``, or ``y[n]`` for outputs of shape ``(N,)``."""

    output: int = 0

    def __post_init__(self) -> None:
        if not _is_index(self.output):
            raise InputError(
                f"RegressionTarget.output={self.output!r} is not valid; use the index of an "
                "output (an int)"
            )

    def check(self, shape: tuple[int, ...], count: int) -> None:
        if len(shape) not in (1, 2):
            raise TargetError(
                f"RegressionTarget needs outputs of shape (N,) or (N, outputs), got {shape}"
            )
        if len(shape) == 2 and not 0 <= self.output < shape[1]:
            raise TargetError(
                f"RegressionTarget.output={self.output} is out of range: the model has "
                f"{shape[1]} outputs"
            )

    def resolve(self, outputs: Array) -> ScoredTarget:
        xp = array_namespace(outputs)
        scores = outputs if outputs.ndim == 1 else outputs[:, self.output]
        return ScoredTarget(scores, xp.full_like(scores, self.output, dtype=xp.int32))


@dataclass(frozen=True)
class SegmentationTarget(Target):
    """A segmentation class summed over a region: ``S[n] = sum_ij y[n, k, i, j] * mask[i, j]``.

    ``outputs`` are ``(N, K, H, W)`` per-pixel class scores (channels-first, as every target
    sees them); ``mask`` is ``(H, W)`` or ``(N, H, W)`` (any array convertible to the outputs'
    namespace), or ``None`` for every pixel.
    """

    class_index: int
    mask: Any = None

    def __post_init__(self) -> None:
        if not _is_index(self.class_index):
            raise InputError(
                f"SegmentationTarget.class_index={self.class_index!r} is not valid; use the "
                "index of a class (an int)"
            )

    def check(self, shape: tuple[int, ...], count: int) -> None:
        if len(shape) != 4:
            raise TargetError(
                f"SegmentationTarget needs outputs of shape (N, classes, H, W), got {shape}"
            )
        if not 0 <= self.class_index < shape[1]:
            raise TargetError(
                f"SegmentationTarget.class_index={self.class_index} is out of range: the model "
                f"has {shape[1]} classes"
            )
        mask_shape = tuple(np.shape(self.mask)) if self.mask is not None else None
        if mask_shape is not None and mask_shape not in (shape[2:], (count, *shape[2:])):
            raise TargetError(
                f"SegmentationTarget.mask has shape {mask_shape}; it must be {shape[2:]} or "
                f"{(count, *shape[2:])} to match the outputs"
            )

    def arrays(self, count: int) -> dict[str, np.ndarray]:
        mask = np.ones((), np.float32) if self.mask is None else _host_values(self.mask)
        return {"mask": np.asarray(mask, np.float32)}

    def resolve(self, outputs: Array) -> ScoredTarget:
        xp = array_namespace(outputs)
        plane = outputs[:, self.class_index, ...]
        if self.mask is not None:
            plane = plane * xp.asarray(self.mask, dtype=outputs.dtype, device=device(outputs))
        scores = xp.sum(plane, axis=(1, 2))
        return ScoredTarget(scores, xp.full_like(scores, self.class_index, dtype=xp.int32))

    def take(self, rows: np.ndarray) -> Target:
        if np.ndim(self.mask) != 3:
            return self
        return SegmentationTarget(self.class_index, take_rows(self.mask, rows))


@dataclass(frozen=True)
class CallableTarget(Target):
    """A score function written in the model's own framework: ``fn(outputs) -> (N,)``, given
    the outputs exactly as the model returns them (a tensor, a tuple, a dict...). For several
    maps per sample, subclass :class:`Target` and return ``(N, K)`` scores."""

    fn: Callable[[Any], Any]
    raw_outputs: ClassVar[bool] = True

    def resolve(self, outputs: Array) -> ScoredTarget:
        return ScoredTarget(self.fn(outputs), None)
