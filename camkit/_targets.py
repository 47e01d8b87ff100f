"""Targets: what score of the model's outputs a map explains.

A target turns the model's outputs into one score per sample, ``(N,)``, the quantity whose
gradients the gradient-based methods take. Targets are written against the Array API (through
:func:`camkit.provider.array_namespace`), so autograd and tracing (torch, JAX, TensorFlow through
its shim) flow through them unchanged, on the model's device. A plain callable is taken to be
written in the model's own framework and is passed the outputs untouched.

Every backend scores through :func:`score_outputs`, the one place where a target meets a model's
outputs, and checks the target against the outputs' shape with :func:`check_outputs`; neither
reads a value back from the device.
"""

from __future__ import annotations

import copy
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ._errors import CamkitError, InputError, TargetError
from ._namespace import array_namespace, device

__all__ = [
    "CallableTarget",
    "ClassTarget",
    "RegressionTarget",
    "ScoredTarget",
    "SegmentationTarget",
    "SoftmaxTarget",
    "Target",
    "TargetLike",
    "TracedTarget",
    "as_target",
    "check_outputs",
    "rows_target",
    "score_outputs",
    "trace_target",
]

Array = Any
_INT32 = np.iinfo(np.int32)


@dataclass(frozen=True)
class ScoredTarget:
    """A target applied to a batch of outputs.

    ``scores`` is ``(N,)`` float32 in the outputs' namespace (differentiable where the outputs
    are); ``indices`` is ``(N,)`` integers, the output index each score was read from, or
    ``None`` where no single index applies (a callable target).
    """

    scores: Array
    indices: Array | None


class Target(ABC):
    """Base class of framework-neutral targets; subclass it to write your own.

    Implement :meth:`resolve`, using ``camkit.provider.array_namespace(outputs)`` for the array
    functions so that it runs on every backend, and optionally :meth:`check`. Class-like outputs
    arrive channels-first, as activations do: ``(N, K)``, or ``(N, K, H, W)`` for per-pixel
    scores, whatever the framework's own layout.
    """

    @abstractmethod
    def resolve(self, outputs: Array) -> ScoredTarget:
        """Score a batch of outputs, ``(N, ...) -> (N,)``."""

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


#: On a target whose data fields are bound to a compiler's traced arrays: the static target
#: (those fields ``None``), whose checks can run on shapes alone while tracing; the full checks
#: run after the compiled call (:func:`check_outputs`).
_STATIC = "_camkit_static"


def _with_fields(
    target: Target, fields: Mapping[str, Any], *, static: Target | None = None
) -> Target:
    """A copy of ``target`` with ``fields`` set, bypassing ``__init__`` and its checks (the
    values may be arrays traced by a compiler, bound to the ``static`` target)."""
    if not fields:
        return target
    bound = copy.copy(target)
    for name, value in fields.items():
        object.__setattr__(bound, name, value)
    if static is not None:
        object.__setattr__(bound, _STATIC, static)
    return bound


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
    """``values[n, indices[n]]`` for ``(N, K)`` values; 0 where an index is out of range (the
    check reports it), so a compiled capture never reads out of bounds."""
    xp = array_namespace(values)
    classes = xp.arange(values.shape[1], dtype=xp.int32, device=device(values))
    hot = xp.astype(classes[None, :] == indices[:, None], values.dtype)
    return xp.sum(values * hot, axis=1)


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


@dataclass(frozen=True)
class ClassTarget(_ClassIndexTarget):
    """The raw output (logit) of a class: ``S[n] = y[n, k_n]``.

    ``index`` is one class for every sample, one class per sample (a sequence or a 1-d integer
    array of any framework), or ``None`` for each sample's top-1 class. Grad-CAM and its family
    explain the pre-softmax score.
    """

    argument: ClassVar[str] = "target"

    def resolve(self, outputs: Array) -> ScoredTarget:
        indices = _chosen_indices(self.index, outputs)
        return ScoredTarget(_pick(outputs, indices), indices)


@dataclass(frozen=True)
class SoftmaxTarget(_ClassIndexTarget):
    """The softmax probability of a class: ``S[n] = exp(y[n, k_n]) / sum_j exp(y[n, j])``.

    ``index`` as for :class:`ClassTarget`.
    """

    argument: ClassVar[str] = "SoftmaxTarget.index"

    def resolve(self, outputs: Array) -> ScoredTarget:
        xp = array_namespace(outputs)
        indices = _chosen_indices(self.index, outputs)
        shifted = xp.exp(outputs - xp.max(outputs, axis=1, keepdims=True))
        probabilities = shifted / xp.sum(shifted, axis=1, keepdims=True)
        return ScoredTarget(_pick(probabilities, indices), indices)


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


@dataclass(frozen=True)
class CallableTarget(Target):
    """A score function written in the model's own framework: ``fn(outputs) -> (N,)``, given
    the outputs exactly as the model returns them (a tensor, a tuple, a dict...)."""

    fn: Callable[[Any], Any]

    def resolve(self, outputs: Array) -> ScoredTarget:
        return ScoredTarget(self.fn(outputs), None)


TargetLike = Target | int | Sequence[int] | Callable[[Any], Any] | None


def as_target(target: TargetLike) -> Target:
    """Turn what a user passes as ``target=`` into a :class:`Target`."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str | bytes):
        raise InputError(
            f"target={target!r} is a string; pass a class index (an int), one index per "
            "sample, None for the top-1 class, a camkit.targets object, or a callable"
        )
    if callable(target):
        return CallableTarget(target)
    return ClassTarget(target)  # type: ignore[arg-type]


def rows_target(
    target: Target, indices: np.ndarray | None, rows: np.ndarray, *, probability: bool
) -> Target:
    """``target`` for a batch whose row ``b`` is a perturbed copy of sample ``rows[b]``.

    A class target is pinned to the classes ``indices`` ``(N,)`` it chose on the unperturbed
    samples (a top-1 target must not follow a perturbed input to another class), as softmax
    probabilities if ``probability``; a per-sample segmentation mask follows its sample. Other
    targets score every row the same way and are returned as they are.
    """
    if isinstance(target, ClassTarget | SoftmaxTarget) and indices is not None:
        chosen = tuple(int(i) for i in np.asarray(indices)[rows])
        if probability or isinstance(target, SoftmaxTarget):
            return SoftmaxTarget(chosen)
        return ClassTarget(chosen)
    if isinstance(target, SegmentationTarget) and np.ndim(target.mask) == 3:
        xp = array_namespace(target.mask)
        picked = xp.take(target.mask, xp.asarray(rows, device=device(target.mask)), axis=0)
        return SegmentationTarget(target.class_index, picked)
    return target


# -- scoring: the one place a target meets a model's outputs -----------------------------------


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is None or isinstance(value, Mapping):
        return type(value).__name__
    return f"an array of shape {tuple(shape)}"


def _shape(value: Any) -> tuple[int | None, ...] | None:
    """The shape of an array (``None`` for an unknown size), or ``None`` for anything else."""
    if not _is_array(value):
        return None
    try:
        return tuple(value.shape)
    except (TypeError, ValueError):  # a TensorFlow shape of unknown rank
        return None


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, Mapping)


def _channels_first(outputs: Array) -> Array:
    """Per-pixel outputs ``(N, ..., K)`` of a channels-last model as ``(N, K, ...)``."""
    if outputs.ndim < 3:
        return outputs
    order = (0, outputs.ndim - 1, *range(1, outputs.ndim - 1))
    return array_namespace(outputs).permute_dims(outputs, order)


def _logits(outputs: Any) -> Any:
    """Outputs that carry ``logits`` (Hugging Face's ``ModelOutput``, a dict with that key):
    the logits; other outputs as they are."""
    if _is_array(outputs):
        return outputs
    found = outputs.get("logits") if isinstance(outputs, Mapping) else None
    found = getattr(outputs, "logits", None) if found is None else found
    return found if _is_array(found) else outputs


def _array_outputs(target: Target, outputs: Any, channels_last: bool) -> Any:
    """What ``target.resolve`` is given: the outputs untouched for a callable, else the
    outputs as one channels-first array (their ``logits`` where they carry them), or a
    :class:`TargetError` naming the fix."""
    if isinstance(target, CallableTarget):
        return outputs
    outputs = _logits(outputs)
    if not _is_array(outputs) or len(outputs.shape) == 0:
        raise TargetError(
            f"the model returns {_describe(outputs)}, not an array of scores (N, ...) nor "
            "outputs with logits; pass target= a callable that takes those outputs and "
            "returns one score per sample"
        )
    return _channels_first(outputs) if channels_last else outputs


def score_outputs(
    target: Target, outputs: Any, count: int | None, *, channels_last: bool = False
) -> ScoredTarget:
    """The scores ``(N,)`` float32 and indices of ``target`` on a model's ``outputs`` for a
    batch of ``count`` samples (``None`` where a compiler left the batch size open), in the
    outputs' namespace and traceable (no value is read).

    Outputs that carry ``logits`` (a Hugging Face ``ModelOutput``, a dict with that key) are
    scored on them. The target's own checks (:meth:`Target.check`) run first, from the outputs'
    shape; a target
    bound to a compiler's traced arrays (:meth:`TracedTarget.bind`) makes those its static part
    can make, and :func:`check_outputs` checks the rest after the compiled call.
    ``channels_last`` says that the model's per-pixel outputs are ``(N, H, W, K)``;
    targets other than a callable see them channels-first. A target that fails, or returns
    anything but one score per sample, raises :class:`~camkit.TargetError` naming what it
    returned.
    """
    given = _array_outputs(target, outputs, channels_last)
    shape = _shape(given)
    static: Target = getattr(target, _STATIC, target)  # what the user gave, less traced data
    if not isinstance(target, CallableTarget) and shape is not None and None not in shape:
        static.check(shape, count if count is not None else shape[0])  # type: ignore[arg-type]
    try:
        scored = target.resolve(given)
    except CamkitError:
        raise
    except Exception as error:
        raise TargetError(
            f"the target {static!r} failed on the model's outputs ({_describe(outputs)}): "
            f"{type(error).__name__}: {error}"
        ) from error
    scores = scored.scores
    shape = _shape(scores)
    if shape is None or len(shape) != 1 or (None not in (count, shape[0]) and shape[0] != count):
        returned = type(scores).__name__ if shape is None else f"shape {shape}"
        raise TargetError(
            f"the target {static!r} returned {returned}; it must return one score per sample, "
            f"shape ({count},)"
        )
    xp = array_namespace(scores)
    indices = None if isinstance(target, CallableTarget) else scored.indices
    return ScoredTarget(xp.astype(scores, xp.float32), indices)


def check_outputs(target: Target, outputs: Any, count: int, *, channels_last: bool = False) -> None:
    """Run ``target``'s own checks (index range, count, mask shape) against the shape of the
    ``outputs``; values are never read, so no device work is waited for."""
    if isinstance(target, CallableTarget):
        return
    shape = tuple(int(s) for s in _array_outputs(target, outputs, False).shape)
    if channels_last and len(shape) >= 3:
        shape = (shape[0], shape[-1], *shape[1:-1])
    target.check(shape, count)


# -- targets in compiled captures ----------------------------------------------------------------
# A compiled capture (tf.function, jax.jit) must not be traced again for every new class index
# or mask: the target is split into a static part (the cache key) and the arrays of
# ``Target.arrays``, which the compiled function takes as inputs and binds back.


class _Identity:
    """A cache key for an unhashable target: equal only to itself, and holding it alive."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.target is self.target

    def __hash__(self) -> int:
        return id(self.target)


@dataclass(frozen=True)
class TracedTarget:
    """A target split for a compiled capture: ``key`` (hashable, static), ``static`` the
    target without its per-call data, and ``arrays`` that data as host arrays by field name.
    Inside the compiled function, ``bind(traced_arrays)`` gives the target to score with."""

    key: Hashable
    static: Target
    arrays: dict[str, np.ndarray]

    def bind(self, arrays: Mapping[str, Any]) -> Target:
        return _with_fields(self.static, arrays, static=self.static)


def trace_target(target: Target, count: int) -> TracedTarget:
    """Split ``target`` for a batch of ``count`` samples (see :class:`TracedTarget`)."""
    arrays = target.arrays(count)
    static = _with_fields(target, dict.fromkeys(arrays))
    key: Hashable = (type(static), static)
    try:
        hash(key)
    except TypeError:
        key = _Identity(static)
    return TracedTarget(key, static, arrays)
