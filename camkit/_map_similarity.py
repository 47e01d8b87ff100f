"""How alike two saliency maps are: rank correlation, structural similarity, top-k overlap.

Pure numpy functions on two batches of maps of one shape, ``(N, *S)`` (``(N, H, W)`` for
images, ``(N, L)`` for signals, ``(N, D, H, W)`` for volumes), each returning one value per
sample, ``(N,)`` float64. They are the measures of the sanity checks (Adebayo et al., "Sanity
Checks for Saliency Maps", NeurIPS 2018, section 3), and take any maps: arrays or
:class:`~camkit.Explanation` objects.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._base import Explanation
from ._checks import number, positive_int
from ._errors import InputError
from ._metrics_scoring import as_maps

__all__ = ["paired_maps", "spearman_correlation", "ssim", "top_k_count", "top_k_intersection"]

#: Wang et al.'s SSIM window: a Gaussian of standard deviation 1.5 pixels, 11 pixels wide.
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
#: The constants that keep SSIM's ratios finite, ``C1 = (K1 L)^2`` and ``C2 = (K2 L)^2``.
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def paired_maps(
    cams: Explanation | Any, other_cams: Explanation | Any
) -> tuple[np.ndarray, np.ndarray]:
    """Two batches of maps as float64 arrays of one shape ``(N, *S)``, checked."""
    a = as_maps(cams, "cams").astype(np.float64)
    b = as_maps(other_cams, "other_cams").astype(np.float64)
    if a.shape != b.shape:
        raise InputError(
            f"the maps have shapes {a.shape} and {b.shape}; compare maps of one shape (N, *S), "
            "explained at one size (size='input')"
        )
    return a, b


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """``(P,) -> (P,)``: 1-based ranks, tied values sharing the mean of the ranks they span
    (values ``[5, 1, 5]`` rank ``[2.5, 1, 2.5]``)."""
    _, where, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the rank of each distinct value's last copy
    return (last - (counts - 1) / 2)[where.reshape(-1)]


def spearman_correlation(
    cams: Explanation | Any, other_cams: Explanation | Any, *, absolute: bool = False
) -> np.ndarray:
    """Spearman's rank correlation of each pair of maps, ``(N,)``.

    ``rho = cov(R(a), R(b)) / (std R(a) std R(b))``: the Pearson correlation of the maps'
    pixel ranks, tied pixels sharing their mean rank (as ``scipy.stats.spearmanr``).
    ``absolute`` ranks ``|a|`` and ``|b|``, as Adebayo et al. do for signed maps (it changes
    nothing for maps in ``[0, 1]``). A constant map has no order to share: it correlates 0 with
    a map that has one, and 1 with another constant map.
    """
    a, b = paired_maps(cams, other_cams)
    if absolute:
        a, b = np.abs(a), np.abs(b)
    rho = np.empty(len(a))
    for n, (x, y) in enumerate(zip(a.reshape(len(a), -1), b.reshape(len(b), -1), strict=True)):
        rank_x = _average_ranks(x) - (len(x) + 1) / 2  # centred: the mean rank is (P + 1) / 2
        rank_y = _average_ranks(y) - (len(y) + 1) / 2
        spread = math.sqrt(float(rank_x @ rank_x) * float(rank_y @ rank_y))
        if spread == 0:
            rho[n] = 1.0 if not rank_x.any() and not rank_y.any() else 0.0
        else:
            rho[n] = float(rank_x @ rank_y) / spread
    return rho


def _gaussian_window(radius: int) -> np.ndarray:
    """``(2 r + 1,)``: the 1-D Gaussian of :data:`SSIM_SIGMA`, cut at ``radius``, summing to 1."""
    offsets = np.arange(-radius, radius + 1)
    window = np.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return window / window.sum()


def _local_means(x: np.ndarray, windows: list[np.ndarray]) -> np.ndarray:
    """``(N, *S) -> (N, *S')``: ``x`` averaged under the separable window at every position
    where the window lies wholly inside the map (``S'[i] = S[i] - len(windows[i]) + 1``)."""
    for axis, window in enumerate(windows, start=1):
        x = sliding_window_view(x, len(window), axis=axis) @ window
    return x


def ssim(cams: Explanation | Any, other_cams: Explanation | Any) -> np.ndarray:
    """The structural similarity index of each pair of maps in ``[0, 1]``, ``(N,)``.

    At each position, with ``mu``, ``sigma^2`` and ``sigma_ab`` the means, variances and
    covariance under a Gaussian window (``sigma = 1.5`` pixels, 11 wide: Wang et al.'s),
    ``SSIM = (2 mu_a mu_b + C1)(2 sigma_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(sigma_a^2 +
    sigma_b^2 + C2))`` with ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` and the data range
    ``L = 1``; the index is its mean over the positions where the window fits wholly inside
    the map (no padding). An axis shorter than 11 pixels takes the widest odd window that
    fits, the same Gaussian cut shorter. Every spatial axis is windowed: signals, images and
    volumes alike.

    Equals ``skimage.metrics.structural_similarity(a, b, data_range=1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)`` on images of at least 11x11 pixels.

    Wang et al., "Image Quality Assessment: From Error Visibility to Structural Similarity",
    IEEE TIP 2004, section III.
    """
    a, b = paired_maps(cams, other_cams)
    for argument, maps in (("cams", a), ("other_cams", b)):
        if maps.min() < 0 or maps.max() > 1:
            raise InputError(
                f"{argument} hold values from {maps.min():g} to {maps.max():g}; SSIM takes "
                "maps in [0, 1]: explain with normalize='minmax' (the default), or rescale them"
            )
    windows = [_gaussian_window(min(SSIM_RADIUS, (side - 1) // 2)) for side in a.shape[1:]]
    mean_a, mean_b = _local_means(a, windows), _local_means(b, windows)
    variance_a = _local_means(a * a, windows) - mean_a**2
    variance_b = _local_means(b * b, windows) - mean_b**2
    covariance = _local_means(a * b, windows) - mean_a * mean_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    index = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / (
        (mean_a**2 + mean_b**2 + c1) * (variance_a + variance_b + c2)
    )
    return index.reshape(len(index), -1).mean(axis=1)


def top_k_count(top_k: int | float, pixels: int) -> int:
    """How many pixels ``top_k`` means in maps of ``pixels`` pixels: an ``int`` is a count
    (at most ``pixels``), a ``float`` in ``(0, 1]`` a fraction, rounded, at least 1."""
    if isinstance(top_k, float):
        fraction = number(top_k, "top_k", minimum=0, maximum=1)
        if fraction == 0:
            raise InputError("top_k=0.0 is not valid; use a fraction in (0, 1] or a pixel count")
        return max(1, round(fraction * pixels))
    count = positive_int(top_k, "top_k")
    if count > pixels:
        raise InputError(
            f"top_k={count} is more than the maps' {pixels} pixels; use a count up to {pixels} "
            "or a fraction in (0, 1]"
        )
    return count


def top_k_intersection(
    cams: Explanation | Any, other_cams: Explanation | Any, top_k: int | float = 0.1
) -> np.ndarray:
    """The share of each map's ``k`` most salient pixels that are among the other map's,
    ``|T_k(a) ∩ T_k(b)| / k``, ``(N,)``.

    ``top_k`` is a pixel count (an ``int``) or a fraction of the pixels (a ``float`` in
    ``(0, 1]``, rounded, at least one pixel). Pixels are ordered by value, most salient
    first, ties by position (row-major), as the deletion metric orders them.

    Ghorbani et al., "Interpretation of Neural Networks is Fragile", AAAI 2019, section 3.
    """
    a, b = paired_maps(cams, other_cams)
    count = len(a)
    k = top_k_count(top_k, math.prod(a.shape[1:]))

    def top(maps: np.ndarray) -> np.ndarray:
        return np.argsort(-maps.reshape(count, -1), axis=1, kind="stable")[:, :k]

    kept = [len(np.intersect1d(x, y)) for x, y in zip(top(a), top(b), strict=True)]
    return np.asarray(kept, dtype=np.float64) / k
