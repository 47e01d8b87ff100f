"""Targets: what score of the model's outputs a map explains.

A target turns the model's outputs into one score per sample, ``(N,)``, the quantity whose
gradients the gradient-based methods take. The framework-neutral targets below are written
against the Array API, so autograd and tracing (torch, JAX) flow through them unchanged; a
backend without an Array API namespace translates them itself. A plain callable is taken to be
written in the model's own framework and is passed through untouched.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device

from ._errors import InputError, TargetError

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
    "rows_target",
    "score_traced",
    "trace_target",
    "validate_target",
]

Array = Any


@dataclass(frozen=True)
class ScoredTarget:
    """A target applied to a batch of outputs.

    ``scores`` is ``(N,)`` in the outputs' namespace (differentiable where the outputs are);
    ``indices`` is ``(N,)`` integers, the output index each score was read from, or ``None``
    where no single index applies (a callable target).
    """

    scores: Array
    indices: Array | None


class Target(ABC):
    """Base class of framework-neutral targets; subclass it to write your own."""

    @abstractmethod
    def resolve(self, outputs: Array) -> ScoredTarget:
        """Score a batch of outputs, ``(N, ...) -> (N,)``."""


def _one_hot(indices: Array, count: int, like: Array) -> Array:
    """``(N,) -> (N, count)`` one-hot rows in ``like``'s dtype and device."""
    xp = array_namespace(like)
    classes = xp.arange(count, device=device(like))
    return xp.astype(classes[None, :] == indices[:, None], like.dtype)


def _class_indices(index: int | Sequence[int] | None, outputs: Array, argument: str) -> Array:
    """Per-sample class indices for ``(N, K)`` outputs, validated against ``N`` and ``K``."""
    xp = array_namespace(outputs)
    if outputs.ndim != 2:
        raise TargetError(
            f"{argument} needs outputs of shape (N, classes), got shape {tuple(outputs.shape)}; "
            "for other outputs use camkit.targets.RegressionTarget, SegmentationTarget or a "
            "callable written in the model's framework"
        )
    n, count = outputs.shape
    if index is None:
        return xp.argmax(outputs, axis=1)
    if isinstance(index, numbers.Integral):
        chosen = [int(index)] * n
    else:
        chosen = [int(i) for i in index]  # type: ignore[union-attr]
    if len(chosen) != n:
        raise TargetError(
            f"{argument} has {len(chosen)} indices for a batch of {n} samples; give one index "
            "per sample, or a single int for all"
        )
    for i in chosen:
        if not 0 <= i < count:
            raise TargetError(
                f"{argument}={i} is out of range: the model has {count} outputs, so indices run "
                f"from 0 to {count - 1}"
            )
    return xp.asarray(chosen, dtype=xp.int64, device=device(outputs))


@dataclass(frozen=True)
class ClassTarget(Target):
    """The raw output (logit) of a class: ``S[n] = y[n, k_n]``.

    ``index`` is one class for every sample, one class per sample, or ``None`` for each
    sample's top-1 class. Grad-CAM and its family explain the pre-softmax score.
    """

    index: int | Sequence[int] | None = None

    def resolve(self, outputs: Array) -> ScoredTarget:
        indices = _class_indices(self.index, outputs, "target")
        hot = _one_hot(indices, outputs.shape[1], outputs)
        return ScoredTarget(array_namespace(outputs).sum(outputs * hot, axis=1), indices)


@dataclass(frozen=True)
class SoftmaxTarget(Target):
    """The softmax probability of a class: ``S[n] = exp(y[n, k_n]) / sum_j exp(y[n, j])``."""

    index: int | Sequence[int] | None = None

    def resolve(self, outputs: Array) -> ScoredTarget:
        xp = array_namespace(outputs)
        indices = _class_indices(self.index, outputs, "SoftmaxTarget.index")
        shifted = xp.exp(outputs - xp.max(outputs, axis=1, keepdims=True))
        probabilities = shifted / xp.sum(shifted, axis=1, keepdims=True)
        hot = _one_hot(indices, outputs.shape[1], outputs)
        return ScoredTarget(xp.sum(probabilities * hot, axis=1), indices)


@dataclass(frozen=True)
class RegressionTarget(Target):
    """A regression output: ``S[n] = y[n, output]``, or ``y[n]`` for outputs of shape ``(N,)``."""

    output: int = 0

    def resolve(self, outputs: Array) -> ScoredTarget:
        xp = array_namespace(outputs)
        n = outputs.shape[0]
        if outputs.ndim == 1:
            scores = outputs
        elif outputs.ndim == 2:
            if not 0 <= self.output < outputs.shape[1]:
                raise TargetError(
                    f"RegressionTarget.output={self.output} is out of range: the model has "
                    f"{outputs.shape[1]} outputs"
                )
            scores = outputs[:, self.output]
        else:
            raise TargetError(
                f"RegressionTarget needs outputs of shape (N,) or (N, outputs), got "
                f"{tuple(outputs.shape)}"
            )
        indices = xp.full((n,), self.output, dtype=xp.int64, device=device(outputs))
        return ScoredTarget(scores, indices)


@dataclass(frozen=True)
class SegmentationTarget(Target):
    """A segmentation class summed over a region: ``S[n] = sum_ij y[n, k, i, j] * mask[i, j]``.

    ``outputs`` are ``(N, K, H, W)`` per-pixel class scores; ``mask`` is ``(H, W)`` or
    ``(N, H, W)`` (any array convertible to the outputs' namespace), or ``None`` for every pixel.
    """

    class_index: int
    mask: Any = None

    def resolve(self, outputs: Array) -> ScoredTarget:
        xp = array_namespace(outputs)
        if outputs.ndim != 4:
            raise TargetError(
                "SegmentationTarget needs outputs of shape (N, classes, H, W), got "
                f"{tuple(outputs.shape)}"
            )
        n, count, height, width = outputs.shape
        if not 0 <= self.class_index < count:
            raise TargetError(
                f"SegmentationTarget.class_index={self.class_index} is out of range: the model "
                f"has {count} classes"
            )
        plane = outputs[:, self.class_index, :, :]
        if self.mask is not None:
            mask = xp.asarray(self.mask, dtype=outputs.dtype, device=device(outputs))
            if tuple(mask.shape[-2:]) != (height, width):
                raise TargetError(
                    f"SegmentationTarget.mask has shape {tuple(mask.shape)}; it must be "
                    f"({height}, {width}) or ({n}, {height}, {width}) to match the outputs"
                )
            plane = plane * mask
        indices = xp.full((n,), self.class_index, dtype=xp.int64, device=device(outputs))
        return ScoredTarget(xp.sum(plane, axis=(1, 2)), indices)


@dataclass(frozen=True)
class CallableTarget(Target):
    """A score function written in the model's own framework: ``fn(outputs) -> (N,)``."""

    fn: Callable[[Any], Any]

    def resolve(self, outputs: Array) -> ScoredTarget:
        scores = self.fn(outputs)
        shape = tuple(getattr(scores, "shape", ()))
        if shape != (outputs.shape[0],):
            raise TargetError(
                f"the target callable {self.fn!r} returned shape {shape}; it must return one "
                f"score per sample, shape ({outputs.shape[0]},)"
            )
        return ScoredTarget(scores, None)


TargetLike = Target | int | Sequence[int] | Callable[[Any], Any] | None


def as_target(target: TargetLike) -> Target:
    """Turn what a user passes as ``target=`` into a :class:`Target`."""
    if isinstance(target, Target):
        return target
    if target is None or isinstance(target, numbers.Integral):
        return ClassTarget(None if target is None else int(target))
    if callable(target):
        return CallableTarget(target)
    if isinstance(target, Sequence) or hasattr(target, "__array__"):
        items: Any = target.tolist() if hasattr(target, "tolist") else target
        values = list(items)
        if all(isinstance(i, numbers.Integral) for i in values):
            return ClassTarget([int(i) for i in values])
    raise InputError(
        f"target={target!r} is not a target; pass None (top-1), a class index, one index per "
        "sample, a camkit.targets object, or a callable written in the model's framework"
    )


def rows_target(
    target: Target, indices: np.ndarray | None, rows: np.ndarray, *, probability: bool
) -> Target:
    """``target`` for a batch whose row ``b`` is a perturbed copy of sample ``rows[b]``.

    A class target is pinned to the classes ``indices`` ``(N,)`` it chose on the unperturbed
    samples (a top-1 target must not follow a perturbed input to another class), as softmax
    probabilities if ``probability``; a per-sample segmentation mask follows its sample. Other
    targets score every row the same way and are returned as they are.
    """
    if isinstance(target, (ClassTarget, SoftmaxTarget)) and indices is not None:
        chosen = [int(i) for i in np.asarray(indices)[rows]]
        if probability or isinstance(target, SoftmaxTarget):
            return SoftmaxTarget(chosen)
        return ClassTarget(chosen)
    if isinstance(target, SegmentationTarget) and getattr(target.mask, "ndim", 0) == 3:
        xp = array_namespace(target.mask)
        picked = xp.take(target.mask, xp.asarray(rows, device=device(target.mask)), axis=0)
        return SegmentationTarget(target.class_index, picked)
    return target


# -- targets in compiled captures -----------------------------------------------------------
# A compiled capture (tf.function, jax.jit) must not be traced again for every new class index
# or mask, so a target is split into a static key and array inputs; the scores are computed
# from those in the compiled function, and the target's own checks run on the outputs after.


@dataclass(frozen=True)
class TracedTarget:
    """A target split for a compiled capture.

    ``key`` is static (part of the compiled function's cache key); ``indices`` ``(N,)`` int32
    (``-1`` for each sample's top-1) and ``mask`` (float32, shape ``()`` when unused) are
    passed to the compiled function as arrays.
    """

    key: tuple[Any, ...]
    indices: np.ndarray
    mask: np.ndarray


def trace_target(target: Target, count: int) -> TracedTarget:
    """Split ``target`` for a batch of ``count`` samples; raise for targets that cannot be."""
    no_mask = np.ones((), np.float32)
    zeros = np.zeros((count,), np.int32)
    if isinstance(target, (ClassTarget, SoftmaxTarget)):
        index = target.index
        if index is None:
            indices = np.full((count,), -1, np.int32)
        elif isinstance(index, numbers.Integral):
            indices = np.full((count,), int(index), np.int32)
        else:
            chosen = [int(i) for i in index]  # type: ignore[union-attr]
            # a wrong count is reported after the run by validate_target
            indices = np.asarray(chosen if len(chosen) == count else [-1] * count, np.int32)
        kind = "class" if isinstance(target, ClassTarget) else "softmax"
        return TracedTarget((kind,), indices, no_mask)
    if isinstance(target, RegressionTarget):
        return TracedTarget(("regression", target.output), zeros, no_mask)
    if isinstance(target, SegmentationTarget):
        mask = no_mask if target.mask is None else np.asarray(target.mask, np.float32)
        return TracedTarget(("segmentation", target.class_index, mask.ndim), zeros, mask)
    if isinstance(target, CallableTarget):
        return TracedTarget(("callable", target.fn), zeros, no_mask)
    raise InputError(
        f"target={target!r} cannot be compiled; pass one of camkit.targets' classes or a "
        "callable written in the model's framework"
    )


def score_traced(
    key: tuple[Any, ...], outputs: Array, indices: Array, mask: Array, *, channels_last: bool
) -> tuple[Array, Array]:
    """Scores ``(N,)`` and output indices ``(N,)`` of a :class:`TracedTarget`, in the Array
    API. Segmentation outputs are ``(N, H, W, K)`` if ``channels_last``, else ``(N, K, H, W)``.

    Indices out of range are clipped here and reported by :func:`validate_target`.
    """
    kind = key[0]
    if kind == "callable":
        scores = key[1](outputs)
        xp = array_namespace(scores)
        return scores, xp.full(scores.shape, -1, dtype=xp.int32)
    xp = array_namespace(outputs)
    outputs = xp.astype(outputs, xp.float32)
    count = outputs.shape[-1] if outputs.ndim > 1 else 1
    if kind in ("class", "softmax"):
        top = xp.astype(xp.argmax(outputs, axis=-1), xp.int32)
        chosen = xp.clip(xp.where(indices >= 0, indices, top), 0, count - 1)
        values = outputs
        if kind == "softmax":
            shifted = xp.exp(outputs - xp.max(outputs, axis=-1, keepdims=True))
            values = shifted / xp.sum(shifted, axis=-1, keepdims=True)
        return xp.sum(values * _one_hot(chosen, count, values), axis=-1), chosen
    if kind == "regression":
        scores = outputs if outputs.ndim == 1 else outputs[:, min(key[1], count - 1)]
        return scores, xp.full(scores.shape, key[1], dtype=xp.int32)
    if channels_last:  # segmentation
        plane = outputs[..., min(key[1], outputs.shape[-1] - 1)]
    else:
        plane = outputs[:, min(key[1], outputs.shape[1] - 1)]
    scores = xp.sum(plane * mask, axis=(1, 2))
    return scores, xp.full(scores.shape, key[1], dtype=xp.int32)


def validate_target(target: Target, outputs: np.ndarray, *, channels_last: bool) -> None:
    """Run the target's own checks (index range, count, mask shape) on host outputs."""
    if isinstance(target, CallableTarget):
        return
    if channels_last and isinstance(target, SegmentationTarget) and outputs.ndim == 4:
        outputs = np.moveaxis(outputs, -1, 1)
    target.resolve(outputs)
