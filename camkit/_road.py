"""ROAD, RemOve And Debias: faithfulness with the removed pixels imputed from their neighbours.

Deletion with a constant baseline leaks the map's shape to the model (the removed pixels form
a mask it can read) and takes the images out of the training distribution; ROAD fills each
removed pixel by noisy linear imputation instead, the weighted mean of its neighbours plus a
little Gaussian noise (:mod:`camkit._imputation`), so the score measures what the removed
pixels carried. Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML 2022.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from . import _checks, _noise
from ._base import Explanation
from ._errors import InputError
from ._imputation import impute_linear
from ._metrics_scoring import Score, Scoring, as_maps, saliency_ranks
from ._protocol import Precision
from ._scoring import TargetLike

__all__ = ["PERCENTAGES", "RoadCurves", "removed_counts", "road"]

Array = Any
#: Which pixels go first: the most relevant (MoRF) or the least relevant (LeRF).
Order = Literal["most", "least"]
#: The paper's percentages of pixels removed.
PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


@dataclass(frozen=True)
class RoadCurves:
    """ROAD's scores at each percentage of pixels removed.

    ``percentages`` ``(P,)``: the percent of each map's pixels removed; ``scores`` ``(N, P)``:
    the target's score of each sample with that many pixels removed and imputed; ``original``
    ``(N,)``: its score on the unperturbed input; ``targets`` ``(N,)``: the class each score
    is of (``-1`` where the target has none); ``order``: ``"most"`` (most relevant first,
    MoRF: lower is better, the score should fall fast) or ``"least"`` (LeRF: higher is better,
    the score should hold).
    """

    percentages: np.ndarray
    scores: np.ndarray
    original: np.ndarray
    targets: np.ndarray
    order: Order

    @property
    def curve(self) -> np.ndarray:
        """``(P,)``: the mean score over the samples at each percentage, the paper's curve."""
        return np.mean(self.scores, axis=0)

    @property
    def auc(self) -> np.ndarray:
        """``(N,)``: each sample's mean score over the percentages, ``(1/P) sum_p
        scores[n, p]``, unweighted (no trapezoid): the curve's average height, which with
        evenly spaced percentages is the area under it per unit of removed fraction by the
        midpoint rule. pytorch-grad-cam's ``ROAD...Average`` metrics return it less
        ``original``."""
        return np.mean(self.scores, axis=1)

    @property
    def mean(self) -> float:
        """The mean of :attr:`auc` over the samples."""
        return float(np.mean(self.auc))

    @property
    def higher_is_better(self) -> bool:
        """Whether a higher :attr:`auc` means a more faithful map: for LeRF."""
        return self.order == "least"


def _is_percentage(value: object) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool | np.bool_)
        and 0 < float(value) < 100
    )


def _percentages(value: object) -> np.ndarray:
    """``value`` as increasing percentages within ``(0, 100)``, ``(P,)`` float64."""
    given = isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.ndim == 1)
    numbers = list(value) if given else []  # type: ignore[call-overload]
    if not (
        numbers
        and all(_is_percentage(q) for q in numbers)
        and all(float(a) < float(b) for a, b in itertools.pairwise(numbers))
    ):
        raise InputError(
            f"percentages={value!r} is not valid; use increasing numbers between 0 and 100 "
            "(both excluded), the percent of pixels removed, such as (10, 20, ..., 90)"
        )
    return np.asarray([float(q) for q in numbers], dtype=np.float64)


def removed_counts(percentages: np.ndarray, pixels: int) -> np.ndarray:
    """``(P,)`` int64: how many of ``pixels`` go at each percentage ``q``,
    ``floor(q (pixels - 1) / 100) + 1``: the pixels at or above the ``(100 - q)``-th percentile
    of a map with distinct values (numpy's linear interpolation), pytorch-grad-cam's reading;
    ``round(q pixels / 100)`` give or take one, and never all of them."""
    return (np.floor(percentages * (pixels - 1) / 100) + 1).astype(np.int64)


def road(
    model: Any,
    inputs: Any,
    cams: Explanation | Any,
    target: TargetLike = None,
    *,
    percentages: Sequence[float] = PERCENTAGES,
    order: Order = "most",
    noise: float = 0.01,
    seed: int | None = None,
    score: Score = "probability",
    batch_size: int = 32,
    backend: str | None = None,
    precision: Precision = "float32",
    progress: bool | None = None,
    image: int | str | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> RoadCurves:
    """ROAD: the score with a percentage of the pixels removed and imputed, most relevant
    first (``order="most"``, MoRF) or least relevant first (``"least"``, LeRF).

    At percentage ``q`` the ``k = floor(q (n - 1) / 100) + 1`` pixels of highest saliency
    (lowest for LeRF; ties in row-major order) are removed from the image's ``n`` pixels in
    every channel and filled by noisy linear imputation: each removed pixel becomes the
    weighted mean of its 8 neighbours inside the image (``1/6`` edge, ``1/12`` diagonal;
    removed neighbours are unknowns too, so the removed pixels of an image and channel solve
    one sparse linear system), plus Gaussian noise of standard deviation ``noise`` in the
    inputs' units. The model scores each imputed image; one forward pass more per sample
    gives ``original``. MoRF: lower is better (a faithful map's pixels carry the score, which
    falls fast); LeRF: higher is better. See :class:`RoadCurves` for the result and its
    ``auc`` (the mean over the percentages).

    Args:
        model: as for :func:`camkit.explain`.
        inputs: as for :func:`camkit.explain` (signals and volumes too: a pixel's
            neighbours are then the 2 or 26 around it).
        cams: the maps ``(N, H, W)`` at the inputs' resolution, or an Explanation.
        target: what to score; a top-1 target is pinned to each sample's class on the
            unperturbed input.
        percentages: the percent of pixels removed at each point, increasing, within
            ``(0, 100)``.
        noise: the imputation noise's standard deviation (0: plain linear imputation).
        seed: makes the noise reproducible; the draw for sample ``i`` at percentage ``j``
            depends on ``(seed, i, j)`` only, not on ``batch_size``.
        score: ``"probability"`` scores a class target by its softmax probability, as the
            paper does; ``"target"`` by the target itself.
        batch_size: imputed inputs per forward pass, imputed together on the host: about
            ``12 * batch_size * C * n`` float64 numbers at a time (0.5 GB for 32 RGB images
            of 224x224).
        image: for models with several inputs, as for :func:`camkit.explain`; only the
            image is perturbed.
        forward_kwargs: as for :func:`camkit.explain`.

    The linear systems are solved on the host in float64 by multigrid-preconditioned
    conjugate gradients to a relative residual of ``1e-6`` (see :mod:`camkit._imputation`),
    about as fast as pytorch-grad-cam's sparse direct solve: some 2.5 s for a 224x224 RGB
    image at the nine default percentages on one CPU core; the forward passes come on top.

    pytorch-grad-cam: its ``percentile`` is the percent of pixels kept, so
    ``ROADMostRelevantFirst(percentile=100 - q)`` and ``ROADLeastRelevantFirst(percentile=100
    - q)`` return ``scores[:, j] - original`` for ``q = percentages[j]`` with
    ``order="most"`` and ``"least"``, removing the same pixels where a map's values are
    distinct, with the same weights (``score="probability"`` for its
    ``ClassifierOutputSoftmaxTarget``, ``"target"`` for ``ClassifierOutputTarget``); its
    ``...Average`` metrics return ``auc - original`` and ``ROADCombined`` returns
    ``(least.auc - most.auc) / 2``. Its noise is 0.01 too, drawn by torch, so the results agree
    exactly with ``noise=0`` on both sides and in distribution otherwise. The authors' code
    removes ``floor(q n / 100)`` pixels for MoRF, breaking ties with random jitter.
    """
    _checks.positive_int(batch_size, "batch_size")
    _checks.one_of(precision, "precision", get_args(Precision))
    _checks.one_of(order, "order", get_args(Order))
    noise = _checks.number(noise, "noise", minimum=0)
    run_seed = _noise.run_seed(_checks.seed(seed))
    percent = _percentages(percentages)
    maps = as_maps(cams)
    spatial = tuple(maps.shape[1:])
    pixels = math.prod(spatial)
    if pixels < 2:
        raise InputError(
            f"cams have shape {maps.shape}: one pixel per map, nothing to impute it from; ROAD "
            "needs maps of at least 2 pixels"
        )
    scoring = Scoring.of(model, inputs, target, backend, score, image, forward_kwargs)
    scoring.check(maps)
    host = scoring.host(scoring.inputs)
    rank = saliency_ranks(maps, most_first=order == "most")  # (N, n): place in removal order
    counts = removed_counts(percent, pixels)
    spread = (1,) * (host.ndim - 1)

    def images(rows: np.ndarray, copies: np.ndarray) -> Array:
        # copy 0 is the input, copy j the input with percent[j - 1] of its pixels imputed
        chosen = host[rows]
        imputed = copies > 0
        if not imputed.any():
            return scoring.on_device(chosen)
        removed = (rank[rows[imputed]] < counts[copies[imputed] - 1][:, None]).reshape(-1, *spatial)
        filled = impute_linear(chosen[imputed], removed)
        if noise > 0:
            pairs = zip(rows[imputed], copies[imputed], strict=True)
            draws = np.stack(
                [_noise.normal(run_seed, (int(r), int(c)), chosen.shape[1:]) for r, c in pairs]
            )
            filled = filled + noise * removed[:, None] * draws
        place = np.maximum(np.cumsum(imputed) - 1, 0)  # each row's place among the imputed
        mixed = np.where(imputed.reshape(-1, *spread), filled[place], chosen)
        return scoring.on_device(mixed.astype(np.float32))

    scores = scoring.score_copies(
        len(percent) + 1, images, batch_size=batch_size, precision=precision,
        progress=progress, label=f"ROAD ({order} relevant first)",
    )  # fmt: skip
    return RoadCurves(
        percentages=percent, scores=scores[:, 1:], original=scores[:, 0],
        targets=scoring.targets, order=order,
    )  # fmt: skip
