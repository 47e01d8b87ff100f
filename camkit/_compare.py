"""How far two explanations of the same inputs agree: for comparing frameworks, methods,
layers or peer libraries map by map.

Maps are ``(N, *S)`` (explanations or arrays) of one shape; every measure is one value per
sample, ``(N,)``, and :class:`Agreement` averages them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._base import Explanation
from ._map_similarity import paired_maps, spearman_correlation, top_k_count, top_k_intersection

__all__ = ["Agreement", "compare"]


@dataclass(frozen=True)
class Agreement:
    """Per-sample agreement of two batches of maps ``a`` and ``b``, ``(N,)`` each.

    ``pearson`` the correlation of the pixel values (1 for two constant maps, 0 for one);
    ``spearman`` that of their ranks; ``max_difference`` ``max |a - b|``; ``top_iou`` the
    intersection over union of the sets of the ``top_pixels`` most salient pixels of each;
    ``peak_distance`` the distance in pixels between the
    two maps' maxima (the first in row-major order where several tie) and ``same_peak``
    whether it is 0. :attr:`means` averages each over the samples.
    """

    pearson: np.ndarray
    spearman: np.ndarray
    max_difference: np.ndarray
    top_iou: np.ndarray
    top_pixels: int
    peak_distance: np.ndarray

    @property
    def same_peak(self) -> np.ndarray:
        return self.peak_distance == 0

    @property
    def means(self) -> dict[str, float]:
        """Each measure's mean over the samples (``same_peak``: the share that agree)."""
        return {
            "pearson": float(self.pearson.mean()),
            "spearman": float(self.spearman.mean()),
            "max_difference": float(self.max_difference.mean()),
            "top_iou": float(self.top_iou.mean()),
            "same_peak": float(self.same_peak.mean()),
        }

    def __str__(self) -> str:
        return ", ".join(f"{name} {value:.4g}" for name, value in self.means.items())


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(axis=1, keepdims=True)
    y = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(axis=1, keepdims=True)
    spread = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    both_flat = ~x.any(axis=1) & ~y.any(axis=1)
    safe = np.where(spread > 0, spread, 1.0)
    return np.where(spread > 0, (x * y).sum(axis=1) / safe, np.where(both_flat, 1.0, 0.0))


def _peak_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    shape = a.shape[1:]
    peaks = [
        np.array(np.unravel_index(np.argmax(m.reshape(len(m), -1), axis=1), shape)).T
        for m in (a, b)
    ]
    return np.sqrt(((peaks[0] - peaks[1]) ** 2).sum(axis=1).astype(np.float64))


def compare(a: Explanation | Any, b: Explanation | Any, *, top: int | float = 0.1) -> Agreement:
    """How far two batches of maps of the same inputs agree, per sample.

    ``pearson = cov(a, b) / (std a std b)`` over the pixels; ``spearman`` the same on the
    pixels' ranks (ties share their mean rank); ``max_difference = max |a - b|``;
    ``top_iou = i / (2k - i)`` with ``i`` the number of the ``k`` most salient pixels the two
    share (``top``: a pixel count, or a fraction of the pixels; ties by row-major position);
    ``peak_distance`` the Euclidean distance between the maxima, in pixels. ``a`` and ``b``
    may come from different frameworks, methods, layers or libraries: explanations, or arrays
    ``(N, *S)`` of one shape (explain at ``size="input"`` to compare layers of other sizes).
    """
    x, y = paired_maps(a, b)
    k = top_k_count(top, math.prod(x.shape[1:]))
    shared = top_k_intersection(x, y, k) * k
    return Agreement(
        pearson=_pearson(x, y),
        spearman=spearman_correlation(x, y),
        max_difference=np.abs(x - y).reshape(len(x), -1).max(axis=1),
        top_iou=shared / (2 * k - shared),
        top_pixels=k,
        peak_distance=_peak_distance(x, y),
    )
