"""Localization: whether a map points at the object, by the boxes or masks it should fall on;
and the export of maps to Quantus, whose localization metrics take them as attributions.

Maps ``(N, H, W)`` (an :class:`~camkit.Explanation` or an array); regions per sample: a mask
``(H, W)``, a box ``(x0, y0, x1, y1)`` in pixels or a sequence of boxes. All on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _checks, _ops
from ._base import Explanation
from ._errors import InputError
from ._metrics_scoring import as_maps

__all__ = [
    "EnergyPointing",
    "PointingGame",
    "energy_pointing_game",
    "pointing_game",
    "quantus_attributions",
]

Regions = Any  # per sample: a mask (H, W), a box (x0, y0, x1, y1) or a sequence of boxes


def _region_masks(regions: Regions, shape: tuple[int, int, int]) -> np.ndarray:
    """Boolean ``(N, H, W)`` masks from masks ``(N, H, W)``, boxes ``(N, 4)``, or one item per
    sample (a mask ``(H, W)``, a box, or a sequence of boxes ``(k, 4)``).

    A box is ``(x0, y0, x1, y1)`` in pixels, ``x1`` and ``y1`` exclusive, with ``x0 < x1`` and
    ``y0 < y1``; a box reaching past the border is clipped to the image, one wholly outside it
    is an error (it could never be hit).
    """
    if len(shape) != 3:
        raise InputError(f"cams have shape {shape}; the pointing games take images' maps (N, H, W)")
    count, height, width = shape
    items = list(np.asarray(regions)) if hasattr(regions, "shape") else list(regions)
    if len(items) != count:
        raise InputError(
            f"regions hold {len(items)} items for {count} maps; give one mask (H, W), box "
            "(x0, y0, x1, y1) or sequence of boxes per map"
        )
    masks = np.zeros(shape, dtype=bool)
    for n, item in enumerate(items):
        array = np.asarray(item)
        if array.shape == (height, width):
            masks[n] = array.astype(bool)
            continue
        boxes = array.dtype != bool and array.size and array.shape[-1:] == (4,) and array.ndim < 3
        if not boxes:
            raise InputError(
                f"regions[{n}] has shape {array.shape}; expected a mask ({height}, {width}) at "
                "the maps' resolution, a box (x0, y0, x1, y1) or a sequence of boxes (k, 4)"
            )
        for box in array.reshape(-1, 4).astype(np.float64):
            x0, y0, x1, y1 = box
            if not (np.isfinite(box).all() and x0 < x1 and y0 < y1):
                raise InputError(
                    f"regions[{n}] has the box {tuple(box.tolist())}; a box is (x0, y0, x1, y1) "
                    "with x0 < x1 and y0 < y1, in pixels"
                )
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                raise InputError(
                    f"regions[{n}] has the box {tuple(box.tolist())}, which lies outside the "
                    f"maps' {width}x{height} pixels; give boxes in the maps' pixel coordinates"
                )
            x0, y0, x1, y1 = np.rint(box).astype(np.int64)
            masks[n, max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)] = True
    return masks


@dataclass(frozen=True)
class PointingGame:
    """``hits`` ``(N,)``: whether each map's maximum falls on its region; ``accuracy`` their
    mean (hits / (hits + misses))."""

    hits: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.hits))


def pointing_game(
    cams: Explanation | Any, regions: Regions, *, tolerance: float = 15.0
) -> PointingGame:
    """The pointing game: a hit when the map's maximum lies within ``tolerance`` pixels of the
    region (a box, several boxes or a mask per sample); the first maximum in row-major order
    when several pixels tie.

    Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016 / IJCV 2018,
    section 5.1 (15-pixel tolerance).
    """
    tolerance = _checks.number(tolerance, "tolerance", minimum=0)
    maps = as_maps(cams)
    masks = _region_masks(regions, maps.shape)
    hits = np.zeros(maps.shape[0], dtype=bool)
    for n, (cam, mask) in enumerate(zip(maps, masks, strict=True)):
        peak = np.array(np.unravel_index(np.argmax(cam), cam.shape))
        inside = np.argwhere(mask)
        if len(inside):
            hits[n] = np.min(np.hypot(*(inside - peak).T)) <= tolerance
    return PointingGame(hits=hits)


@dataclass(frozen=True)
class EnergyPointing:
    """``proportions`` ``(N,)``: the share of each map's energy inside its region; ``mean``."""

    proportions: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.mean(self.proportions))


def energy_pointing_game(cams: Explanation | Any, regions: Regions) -> EnergyPointing:
    """The energy-based pointing game: ``sum_{ij in region} M_ij / sum_ij M_ij`` per map (maps
    non-negative, as after ReLU and normalization; an all-zero map scores 0).

    Wang et al., "Score-CAM", CVPR Workshops 2020, section 4.2.
    """
    maps = as_maps(cams)
    masks = _region_masks(regions, maps.shape)
    total = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    return EnergyPointing(
        proportions=np.where(total > 0, inside / np.where(total > 0, total, 1), 0)
    )


def quantus_attributions(cams: Explanation | Any, size: Sequence[int] | None = None) -> np.ndarray:
    """Maps as the ``(N, 1, H, W)`` float32 attributions that Quantus' metrics take (``a_batch``).

    ``size`` ``(H, W)`` resizes them bilinearly to the inputs' resolution where they were
    computed at another size; without it they must already be at that resolution.
    """
    maps = as_maps(cams)
    if size is not None:
        target = _checks.positive_sizes(size, "size", "the inputs' spatial size, or None")
        maps = _ops.resize_linear(maps, target)
    return np.ascontiguousarray(maps[:, None, ...], dtype=np.float32)
