"""Where targets meet a model: turning ``target=`` into a target, and scoring outputs with it.

Every backend scores through :func:`score_outputs`, the one place where a target meets a model's
outputs, and checks the target against the outputs' shape with :func:`check_outputs`; neither
reads a value back from the device. :func:`trace_target` splits a target for compiled captures;
:func:`rows_target` gives a target for perturbed copies of the samples (masked passes, metrics).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import CamkitError, InputError, TargetError
from ._multi import AllClasses, Classes, TopK
from ._namespace import array_namespace, device, take_rows
from ._targets import (
    CallableTarget,
    ClassScore,
    ClassTarget,
    ScoredTarget,
    SigmoidTarget,
    SoftmaxTarget,
    Target,
    _host_values,
    _pick,
    class_scores,
)

__all__ = [
    "PinnedClasses",
    "TargetLike",
    "TracedTarget",
    "as_target",
    "check_outputs",
    "rows_target",
    "score_outputs",
    "trace_target",
]

Array = Any
TargetLike = Target | int | Sequence[int] | Sequence[Sequence[int]] | Callable[[Any], Any] | None


def as_target(target: TargetLike) -> Target:
    """Turn what a user passes as ``target=`` into a :class:`Target`: a 2-d list or integer
    array of classes becomes :class:`Classes`, a callable :class:`CallableTarget`, anything
    else :class:`ClassTarget`."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str | bytes):
        raise InputError(
            f"target={target!r} is a string; pass a class index (an int), one index per "
            "sample, classes per sample (a 2-d list), None for the top-1 class, a "
            "camkit.targets object, or a callable"
        )
    if callable(target):
        return CallableTarget(target)
    values = _host_values(target)
    if isinstance(values, list | tuple) and values and all(
        isinstance(row, list | tuple) for row in values
    ):  # fmt: skip
        return Classes(values)
    return ClassTarget(target)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PinnedClasses(Target):
    """Classes already chosen, one per score: ``S[r] = score(y)[r, c[r]]`` (``(R,)``), or
    ``S[r, k] = score(y)[r, c[r, k]]`` (``(R, K)``).

    ``indices`` are what a capture's target chose on the unperturbed samples, an integer
    array of the outputs' framework (on the model's device: taking rows and scoring never read
    it back to the host) or of numpy; ``score`` reads the class outputs (see
    :func:`~camkit._targets.class_scores`). Made by :func:`rows_target`, not by users.
    """

    indices: Array = None
    score: ClassScore = "logit"
    #: ``K`` for ``(R, K)`` indices, ``None`` for ``(R,)``: static, so that a compiler that
    #: generalizes the indices' shape (TensorFlow's retracing) still knows their rank.
    columns: int | None = None

    def __post_init__(self) -> None:
        if self.indices is not None and self.columns is None and self.indices.ndim == 2:
            object.__setattr__(self, "columns", int(self.indices.shape[1]))

    def check(self, shape: tuple[int, ...], count: int) -> None:
        if len(shape) != 2:
            raise TargetError(f"a pinned class target needs outputs (N, classes), got {shape}")

    def arrays(self, count: int) -> dict[str, Array]:
        return {"indices": self.indices}

    def take(self, rows: np.ndarray) -> Target:
        if isinstance(self.indices, np.ndarray):
            return PinnedClasses(self.indices[rows], self.score, self.columns)
        return PinnedClasses(take_rows(self.indices, rows), self.score, self.columns)

    def resolve(self, outputs: Array) -> ScoredTarget:
        xp = array_namespace(outputs)
        indices = xp.astype(xp.asarray(self.indices, device=device(outputs)), xp.int32)
        indices = xp.reshape(indices, (-1,) if self.columns is None else (-1, self.columns))
        return ScoredTarget(_pick(class_scores(outputs, self.score), indices), indices)


def rows_target(
    target: Target, indices: Array | None, rows: np.ndarray, *, probability: bool
) -> Target:
    """``target`` for a batch whose row ``b`` is a perturbed copy of sample ``rows[b]``.

    A class target is pinned to the classes ``indices`` (``(N,)``, or ``(N, K)`` for several per
    sample; numpy or the framework's array, left where it is) it chose on the unperturbed
    samples (a top-1 target must not follow a perturbed input to another class), read as
    softmax probabilities if ``probability`` (a sigmoid target keeps its sigmoid); other
    targets take their rows (:meth:`Target.take`).
    """
    score: ClassScore
    if indices is None:
        return target.take(rows)
    if isinstance(target, TopK | Classes | AllClasses):
        score = "probability" if probability and target.score == "logit" else target.score
    elif isinstance(target, SigmoidTarget):
        score = "sigmoid"
    elif isinstance(target, ClassTarget | SoftmaxTarget):
        score = "probability" if probability or isinstance(target, SoftmaxTarget) else "logit"
    else:
        return target.take(rows)
    return PinnedClasses(indices, score).take(rows)


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
    """What ``target.resolve`` is given: the outputs untouched for a target with
    ``raw_outputs``, else the outputs as one channels-first array (their ``logits`` where they
    carry them), or a :class:`TargetError` naming the fix."""
    if target.raw_outputs:
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
    """The scores ``(N,)`` (or ``(N, K)``) float32 and indices of ``target`` on a model's
    ``outputs`` for a batch of ``count`` samples (``None`` where a compiler left the batch
    size open), in the outputs' namespace and traceable (no value is read).

    Outputs that carry ``logits`` (a Hugging Face ``ModelOutput``, a dict with that key) are
    scored on them, unless the target takes ``raw_outputs``. The target's own checks
    (:meth:`Target.check`) run first, from the outputs' shape; a target bound to a compiler's
    traced arrays (:meth:`TracedTarget.bind`) makes those its static part can make, and
    :func:`check_outputs` checks the rest after the compiled call. ``channels_last`` says that
    the model's per-pixel outputs are ``(N, H, W, K)``; targets see them channels-first. A
    target that fails, or returns anything but one score (or one row of ``K`` scores) per
    sample, raises :class:`~camkit.TargetError` naming what it returned.
    """
    given = _array_outputs(target, outputs, channels_last)
    shape = _shape(given)
    static: Target = getattr(target, _STATIC, target)  # what the user gave, less traced data
    if not target.raw_outputs and shape is not None and None not in shape:
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
    scores, indices = scored.scores, scored.indices
    shape = _shape(scores)
    # a callable returning its outputs whole, (N, classes), is a mistake, not K maps
    ranks = (1,) if isinstance(target, CallableTarget) else (1, 2)
    if (
        shape is None
        or len(shape) not in ranks
        or (None not in (count, shape[0]) and shape[0] != count)
        or 0 in shape
    ):
        returned = type(scores).__name__ if shape is None else f"shape {shape}"
        several = "" if len(ranks) == 1 else f", or K scores per sample, ({count}, K)"
        raise TargetError(
            f"the target {static!r} returned {returned}; it must return one score per sample, "
            f"shape ({count},){several}"
        )
    if indices is not None and _shape(indices) != shape:
        raise TargetError(
            f"the target {static!r} returned indices of shape {_shape(indices)} for scores of "
            f"shape {shape}; give one index per score, or None"
        )
    xp = array_namespace(scores)
    return ScoredTarget(xp.astype(scores, xp.float32), indices)


def check_outputs(target: Target, outputs: Any, count: int, *, channels_last: bool = False) -> None:
    """Run ``target``'s own checks (index range, count, mask shape) against the shape of the
    ``outputs``; values are never read, so no device work is waited for. A target with
    ``raw_outputs`` checks what it reads while it scores."""
    if target.raw_outputs:
        return
    shape = tuple(int(s) for s in _array_outputs(target, outputs, False).shape)
    if channels_last and len(shape) >= 3:
        shape = (shape[0], shape[-1], *shape[1:-1])
    target.check(shape, count)


# -- targets in compiled captures ----------------------------------------------------------------
# A compiled capture (tf.function, jax.jit) must not be traced again for every new class index
# or mask: the target is split into a static part (the cache key) and the arrays of
# ``Target.arrays``, which the compiled function takes as inputs and binds back.


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
