"""Several classes per sample: targets whose ``K`` scores per sample get ``K`` maps.

Each scores class outputs ``y`` ``(N, C)`` read as ``score`` (logits, softmax or sigmoid
probabilities) at ``K`` classes per sample,
``S[n, k] = score(y)[n, c[n, k]]``, and returns ``(N, K)`` scores with the ``(N, K)`` classes
``c``. The backends take the ``K`` gradients ``dS[:, k] / dA`` from one forward pass, and the
perturbation methods score all ``K`` classes on each masked pass.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, replace
from typing import Any, get_args

import numpy as np

from ._errors import InputError, TargetError
from ._namespace import array_namespace, device
from ._targets import ClassScore, ScoredTarget, Target, _host_values, _pick, class_scores

__all__ = ["AllClasses", "Classes", "TopK"]

Array = Any


def _check_score(score: object, owner: str) -> None:
    if score not in get_args(ClassScore):
        raise InputError(
            f"{owner}.score={score!r} is not valid; use 'logit' (the raw output), "
            "'probability' (softmax over the classes) or 'sigmoid' (multi-label models)"
        )


def _check_classes(shape: tuple[int, ...], owner: str) -> None:
    if len(shape) != 2:
        raise TargetError(
            f"{owner} needs class outputs of shape (N, classes), got shape {shape}; for other "
            "outputs use a callable target that returns (N, K) scores"
        )


@dataclass(frozen=True)
class _ClassColumns(Target):
    """A target scoring ``K`` chosen classes per sample."""

    @abstractmethod
    def columns(self, outputs: Array) -> Array:
        """The ``(N, K)`` int32 classes to score, on the outputs' device."""

    def resolve(self, outputs: Array) -> ScoredTarget:
        indices = self.columns(outputs)
        score: ClassScore = self.score  # type: ignore[attr-defined]
        return ScoredTarget(_pick(class_scores(outputs, score), indices), indices)


@dataclass(frozen=True)
class TopK(_ClassColumns):
    """Each sample's ``k`` highest-scoring classes, highest first: ``K = k`` maps per sample.

    ``score`` is what each map explains: ``"logit"`` (default, as for one class),
    ``"probability"`` (softmax) or ``"sigmoid"`` (multi-label). Classes rank by their outputs
    (every ``score`` ranks them alike); equal outputs rank by class index, lowest first.
    """

    k: int
    score: ClassScore = "logit"

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int | np.integer) or self.k < 1:
            raise InputError(
                f"TopK.k={self.k!r} is not valid; use a positive int, the maps per sample"
            )
        object.__setattr__(self, "k", int(self.k))
        _check_score(self.score, "TopK")

    def check(self, shape: tuple[int, ...], count: int) -> None:
        _check_classes(shape, "TopK")
        if self.k > shape[1]:
            raise TargetError(
                f"TopK.k={self.k} is more than the model's {shape[1]} classes; use k <= "
                f"{shape[1]}, or AllClasses()"
            )

    def columns(self, outputs: Array) -> Array:
        xp = array_namespace(outputs)
        order = xp.argsort(outputs, axis=1, descending=True, stable=True)
        return xp.astype(order[:, : self.k], xp.int32)


@dataclass(frozen=True)
class Classes(_ClassColumns):
    """Given classes: ``index`` ``(K,)`` the same ``K`` classes for every sample, or ``(N, K)``
    classes per sample (any nested sequence or integer array). ``target=[[1, 5], [2, 7]]``
    (a 2-d list) is ``Classes`` of it. ``score`` as for :class:`TopK`.
    """

    index: Any
    score: ClassScore = "logit"

    def __post_init__(self) -> None:
        _check_score(self.score, "Classes")
        if self.index is None:  # a static target while a compiler traces its data
            return
        try:
            values = np.asarray(_host_values(self.index))
        except ValueError:  # ragged
            values = np.asarray([], np.float32)
        if values.ndim not in (1, 2) or not values.size or values.dtype.kind not in "iu":
            raise InputError(
                f"Classes.index={self.index!r} is not valid; give class indices (ints), (K,) "
                "for every sample or (N, K) per sample"
            )
        object.__setattr__(self, "index", tuple(map(tuple, np.atleast_2d(values).tolist())))

    def _rows(self, count: int) -> np.ndarray:
        values = np.asarray(self.index, np.int64)
        if values.shape[0] not in (1, count):
            raise TargetError(
                f"Classes.index has classes for {values.shape[0]} samples but the batch has "
                f"{count}; give (K,) classes for all, or (N, K) per sample"
            )
        return np.broadcast_to(values, (count, values.shape[1]))

    def check(self, shape: tuple[int, ...], count: int) -> None:
        _check_classes(shape, "Classes")
        if self.index is None:
            return
        rows = self._rows(count)
        outside = rows[(rows < 0) | (rows >= shape[1])]
        if outside.size:
            raise TargetError(
                f"Classes.index holds {int(outside[0])}, out of range: the model has {shape[1]} "
                f"outputs, so class indices run from 0 to {shape[1] - 1}"
            )

    def arrays(self, count: int) -> dict[str, np.ndarray]:
        clipped = np.clip(self._rows(count), np.iinfo(np.int32).min, np.iinfo(np.int32).max)
        return {"index": clipped.astype(np.int32)}

    def take(self, rows: np.ndarray) -> Target:
        values = np.asarray(self.index)
        return self if values.shape[0] == 1 else replace(self, index=values[rows])

    def columns(self, outputs: Array) -> Array:
        xp = array_namespace(outputs)
        if isinstance(self.index, tuple):
            rows = self._rows(outputs.shape[0])
            return xp.asarray(np.ascontiguousarray(rows, np.int32), device=device(outputs))
        return xp.astype(self.index, xp.int32)  # traced by a compiler: (N, K) already


@dataclass(frozen=True)
class AllClasses(Target):
    """Every class, in order: ``K = C`` maps per sample, map ``k`` for class ``k``. ``score``
    as for :class:`TopK`. Memory grows with ``C`` times the layer's size."""

    score: ClassScore = "logit"

    def __post_init__(self) -> None:
        _check_score(self.score, "AllClasses")

    def check(self, shape: tuple[int, ...], count: int) -> None:
        _check_classes(shape, "AllClasses")

    def resolve(self, outputs: Array) -> ScoredTarget:
        xp = array_namespace(outputs)
        classes = xp.arange(outputs.shape[1], dtype=xp.int32, device=device(outputs))
        indices = xp.broadcast_to(classes[None, :], tuple(outputs.shape))
        return ScoredTarget(class_scores(outputs, self.score), indices)
