"""Faithfulness by perturbation: deletion and insertion curves, average drop and increase in
confidence.

Each perturbs the image with the map and scores the perturbed copies through the backend
(:class:`~camkit._metrics_scoring.Scoring`); maps ``(N, *S)`` at the image's resolution,
inputs as for :func:`camkit.explain`. ``X`` is the image channels-first ``(N, C, *S)``, ``M``
the map, ``n = |S|`` its pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from array_api_compat import array_namespace

from . import _checks, _ops
from ._base import Explanation
from ._errors import InputError
from ._metrics_scoring import Score, Scoring, as_maps, saliency_ranks
from ._protocol import Precision
from ._scoring import TargetLike

__all__ = ["ConfidenceChange", "Curves", "confidence_change", "deletion", "insertion"]

Array = Any
Baseline = float | Literal["blur"] | Any


@dataclass(frozen=True)
class Curves:
    """Deletion or insertion curves.

    ``fractions`` ``(S + 1,)``: the fraction of pixels changed at step ``i``,
    ``f_i = floor(i n / S) / n`` for ``S`` steps (``f_0 = 0``, ``f_S = 1``); ``scores``
    ``(N, S + 1)``: the target's score there, the curve's points ``(f_i, scores[:, i])``;
    ``auc`` ``(N,)``: the area under each curve by the trapezoidal rule over the fractions,
    ``sum_{i=1..S} (f_i - f_{i-1}) (s_{i-1} + s_i) / 2``, in the score's units (within
    ``[0, 1]`` for probabilities); ``targets`` ``(N,)``: the class each score is of (``-1``
    where the target has none).
    """

    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray
    targets: np.ndarray

    @property
    def mean(self) -> float:
        """The mean AUC over the samples."""
        return float(np.mean(self.auc))


def _broadcasts(given: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(given, shape) == shape
    except ValueError:
        return False


def _baseline(scoring: Scoring, baseline: Baseline, blur_sigma: float) -> Array:
    x = scoring.inputs
    wanted = "'blur', a number or an array shaped like the channels-first inputs"
    if isinstance(baseline, str):
        _checks.one_of(baseline, "baseline", ("blur",))
        return _ops.blur_gaussian(x, blur_sigma)
    if isinstance(baseline, int | float) and not isinstance(baseline, bool):
        return x * 0 + _checks.number(baseline, "baseline")
    try:
        values = np.asarray(baseline, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"baseline={baseline!r} is not valid; use {wanted}") from None
    shape = tuple(int(s) for s in x.shape)
    if not _broadcasts(values.shape, shape):
        raise InputError(
            f"baseline has shape {values.shape}, which does not broadcast to the inputs' "
            f"channels-first shape {shape}; use {wanted}"
        )
    return x * 0 + scoring.on_device(values)


def _trapezoid(fractions: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``(S + 1,), (N, S + 1) -> (N,)``: the trapezoidal rule along the last axis."""
    widths = np.diff(fractions)
    return np.sum(widths * (scores[:, 1:] + scores[:, :-1]) / 2, axis=1)


def _curves(
    model: Any, inputs: Any, cams: Explanation | Any, target: TargetLike, *, insert: bool,
    steps: int, baseline: Baseline, blur_sigma: float, score: Score, batch_size: int,
    backend: str | None, precision: Precision, progress: bool | None,
    image: int | str | None, forward_kwargs: Mapping[str, Any] | None,
) -> Curves:  # fmt: skip
    _checks.positive_int(steps, "steps")
    _checks.positive_int(batch_size, "batch_size")
    _checks.one_of(precision, "precision", get_args(Precision))
    _checks.number(blur_sigma, "blur_sigma", minimum=0)
    maps = as_maps(cams)
    scoring = Scoring.of(model, inputs, target, backend, score, image, forward_kwargs)
    scoring.check(maps)
    x = scoring.inputs
    xp = array_namespace(x)
    pixels = math.prod(maps.shape[1:])
    spread = (1,) * (maps.ndim - 1)  # broadcasts a per-row value over the spatial axes
    ranks = scoring.on_device(saliency_ranks(maps).reshape(maps.shape).astype(np.float32))
    changed_counts = (np.arange(steps + 1) * pixels) // steps
    removed = _baseline(scoring, baseline, blur_sigma)
    start_images, end_images = (removed, x) if insert else (x, removed)

    def images(rows: np.ndarray, step: np.ndarray) -> Array:
        limits = scoring.on_device(changed_counts[step].astype(np.float32))
        limits = xp.reshape(limits, (len(rows), *spread))
        changed = xp.astype(scoring.take(ranks, rows) < limits, x.dtype)
        first, last = scoring.take(start_images, rows), scoring.take(end_images, rows)
        return first + changed[:, None, ...] * (last - first)

    curve = scoring.score_copies(
        steps + 1, images, batch_size=batch_size, precision=precision, progress=progress,
        label="insertion" if insert else "deletion",
    )  # fmt: skip
    fractions = changed_counts / pixels
    return Curves(
        fractions=fractions, scores=curve, auc=_trapezoid(fractions, curve),
        targets=scoring.targets,
    )  # fmt: skip


def deletion(
    model: Any,
    inputs: Any,
    cams: Explanation | Any,
    target: TargetLike = None,
    *,
    steps: int = 50,
    baseline: Baseline = 0.0,
    blur_sigma: float = 5.0,
    score: Score = "probability",
    batch_size: int = 32,
    backend: str | None = None,
    precision: Precision = "float32",
    progress: bool | None = None,
    image: int | str | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Curves:
    """The deletion curve: the score as the most salient pixels are removed first.

    At step ``i = 0..steps`` the ``floor(i n / steps)`` pixels of highest saliency (ties in
    row-major order) are replaced by the baseline ``B`` in every channel,
    ``X_i = X + m_i (B - X)``; the curve's points are ``(f_i, s(X_i))`` with ``f_i`` that
    count over ``n``, from ``0`` (the input) to ``1`` (all baseline). ``auc`` is the area
    under it by the trapezoidal rule over ``f`` from 0 to 1 (see :class:`Curves`). Lower is
    better: a faithful map puts first the pixels the score rests on, so the score falls early
    and the area is small. ``score="probability"`` scores a class target by its softmax
    probability (the paper's choice), ``"target"`` by the target itself.

    Args:
        model: as for :func:`camkit.explain`.
        inputs: as for :func:`camkit.explain`.
        cams: the maps ``(N, H, W)`` at the inputs' resolution, or an Explanation.
        target: what to score; a top-1 target is pinned to each sample's class on the
            unperturbed input.
        baseline: what removed pixels become: a number, ``"blur"`` (the input blurred with a
            Gaussian of ``blur_sigma`` pixels) or an array shaped like the channels-first inputs.
        batch_size: perturbed inputs per forward pass.
        image: for models with several inputs, as for :func:`camkit.explain`; only the
            image is perturbed.
        forward_kwargs: as for :func:`camkit.explain`.

    Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models",
    BMVC 2018, section 4.1.
    """
    return _curves(
        model, inputs, cams, target, insert=False, steps=steps, baseline=baseline,
        blur_sigma=blur_sigma, score=score, batch_size=batch_size, backend=backend,
        precision=precision, progress=progress, image=image, forward_kwargs=forward_kwargs,
    )  # fmt: skip


def insertion(
    model: Any,
    inputs: Any,
    cams: Explanation | Any,
    target: TargetLike = None,
    *,
    steps: int = 50,
    baseline: Baseline = "blur",
    blur_sigma: float = 5.0,
    score: Score = "probability",
    batch_size: int = 32,
    backend: str | None = None,
    precision: Precision = "float32",
    progress: bool | None = None,
    image: int | str | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Curves:
    """The insertion curve: the score as the most salient pixels are put back first.

    Starting from the baseline ``B`` (by default the input blurred with a Gaussian of
    ``blur_sigma`` pixels), step ``i = 0..steps`` restores the ``floor(i n / steps)`` pixels
    of highest saliency, ``X_i = B + m_i (X - B)``; the curve's points are ``(f_i, s(X_i))``
    from ``f_0 = 0`` (all baseline) to ``f_S = 1`` (the input), and ``auc`` is the area under
    it by the trapezoidal rule over ``f`` (see :class:`Curves`). Higher is better: a faithful
    map restores first the pixels the score rests on, so the score rises early and the area is
    large. Arguments as for :func:`deletion`.

    Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models",
    BMVC 2018, section 4.1.
    """
    return _curves(
        model, inputs, cams, target, insert=True, steps=steps, baseline=baseline,
        blur_sigma=blur_sigma, score=score, batch_size=batch_size, backend=backend,
        precision=precision, progress=progress, image=image, forward_kwargs=forward_kwargs,
    )  # fmt: skip


@dataclass(frozen=True)
class ConfidenceChange:
    """Average drop and increase in confidence.

    ``original`` ``(N,)`` the score ``Y`` of each input; ``explained`` ``(N,)`` the score ``O``
    of the input multiplied by its map; ``drop`` ``(N,)`` the fraction ``max(0, Y - O) / Y``
    (0 where ``Y = 0``); ``increased`` ``(N,)`` whether ``O > Y``.
    """

    original: np.ndarray
    explained: np.ndarray
    drop: np.ndarray
    increased: np.ndarray

    @property
    def average_drop(self) -> float:
        """``100 * mean(drop)``: in percent, from 0 to 100 (lower is better), as the paper
        reports it; ``0.5`` means a drop of half a percent, not of half the score."""
        return float(100 * np.mean(self.drop))

    @property
    def increase_in_confidence(self) -> float:
        """``100 * mean(increased)``: the percentage of samples, from 0 to 100, whose score
        the map alone raises (higher is better)."""
        return float(100 * np.mean(self.increased))


def confidence_change(
    model: Any,
    inputs: Any,
    cams: Explanation | Any,
    target: TargetLike = None,
    *,
    score: Score = "probability",
    batch_size: int = 32,
    backend: str | None = None,
    precision: Precision = "float32",
    image: int | str | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> ConfidenceChange:
    """Average drop ``100 (1/N) sum_n max(0, Y_n - O_n) / Y_n`` and increase in confidence
    ``100 (1/N) sum_n [O_n > Y_n]``, both in percent, where ``Y_n`` is the score of the input
    and ``O_n`` that of the explanation map ``X_n * M_n`` (maps in ``[0, 1]``, as normalized).
    ``batch_size`` counts the inputs and explanation maps of a forward pass together.

    Chattopadhay et al., "Grad-CAM++", WACV 2018, section 5.1 (eqs. 20-21).
    """
    _checks.positive_int(batch_size, "batch_size")
    _checks.one_of(precision, "precision", get_args(Precision))
    maps = as_maps(cams)
    scoring = Scoring.of(model, inputs, target, backend, score, image, forward_kwargs)
    scoring.check(maps)
    x = scoring.inputs
    xp = array_namespace(x)
    weights = scoring.on_device(maps)[:, None, ...]
    spread = (1,) * (x.ndim - 1)

    def images(rows: np.ndarray, copies: np.ndarray) -> Array:
        # copy 0 is the input, copy 1 its explanation map
        chosen = scoring.take(x, rows)
        explained = xp.reshape(scoring.on_device(copies.astype(np.float32)) > 0, (-1, *spread))
        return xp.where(explained, chosen * scoring.take(weights, rows), chosen)

    both = scoring.score_copies(
        2, images, batch_size=batch_size, precision=precision, progress=False,
        label="confidence change",
    )  # fmt: skip
    y, o = both[:, 0], both[:, 1]
    drop = np.where(y != 0, np.maximum(y - o, 0) / np.where(y != 0, y, 1), 0.0)
    return ConfidenceChange(original=y, explained=o, drop=drop, increased=o > y)
