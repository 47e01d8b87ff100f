"""Images for people to look at: a map blended over its photo, and several images in a grid.

Host-side uint8 RGB images made with OpenCV, which is imported on first use so that
``import camkit`` stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _checks
from ._errors import InputError

__all__ = ["COLORMAPS", "image_grid", "overlay"]

#: Colormap names accepted by :func:`overlay`, each an OpenCV ``COLORMAP_*``.
COLORMAPS = (
    "jet", "turbo", "viridis", "inferno", "magma", "plasma", "hot", "bone", "parula", "rainbow",
)  # fmt: skip


def _cv2() -> Any:
    import cv2  # deferred: OpenCV is heavy and only needed to draw

    return cv2


def _as_rgb_uint8(image: Any, argument: str) -> np.ndarray:
    """``(H, W)``, ``(H, W, 1|3)`` or ``(1|3, H, W)``, uint8 or float in [0, 1] -> ``(H, W, 3)``."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3 or 0 in array.shape:
        raise InputError(
            f"{argument} has shape {np.asarray(image).shape}; expected an RGB image (H, W, 3), "
            "a channels-first (3, H, W) one, or a grayscale (H, W), with at least one pixel"
        )
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_:
        low, high = float(np.min(array)), float(np.max(array))
        if low < 0.0 or high > 1.0:
            raise InputError(
                f"{argument} is {array.dtype} with values in [{low:.3g}, {high:.3g}]; float "
                "images must lie in [0, 1] (divide 0-255 images by 255, or undo the model's "
                "normalization first)"
            )
        return np.round(array * 255.0).astype(np.uint8)
    raise InputError(f"{argument} has dtype {array.dtype}; pass uint8 or float in [0, 1]")


def overlay(image: Any, cam: Any, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend a colored map over an image: ``(1 - alpha) * image + alpha * colormap(cam)``.

    ``image`` is RGB ``(H, W, 3)`` (or channels-first, or grayscale), uint8 or float in
    ``[0, 1]``. ``cam`` is one map ``(h, w)``; it is resized bilinearly to ``(H, W)``, and
    min-max normalized if its values leave ``[0, 1]``. Returns uint8 RGB ``(H, W, 3)``.
    """
    alpha = _checks.number(alpha, "alpha", minimum=0, maximum=1)
    _checks.one_of(colormap, "colormap", COLORMAPS)
    cv2 = _cv2()
    picture = _as_rgb_uint8(image, "image")
    heat = np.asarray(cam, dtype=np.float32)
    if heat.ndim == 3 and heat.shape[0] == 1:
        heat = heat[0]
    if heat.ndim != 2 or heat.size == 0:
        raise InputError(
            f"cam has shape {np.asarray(cam).shape}; overlay takes one map (h, w): pass "
            "explanation.cams[i] for the i-th image"
        )
    if not np.isfinite(heat).all():
        raise InputError(
            "cam holds NaN or inf; overlay needs a finite map (a sample explained with "
            "nonfinite='nan' has no map to show)"
        )
    low, high = float(np.min(heat)), float(np.max(heat))
    if low < 0.0 or high > 1.0:  # by the map's own range, before resizing can miss its extremes
        heat = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    height, width = picture.shape[:2]
    if heat.shape != (height, width):
        heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
    code = getattr(cv2, f"COLORMAP_{colormap.upper()}")
    colored = cv2.applyColorMap(np.round(heat * 255.0).astype(np.uint8), code)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    blended = (1.0 - alpha) * picture.astype(np.float32) + alpha * colored.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def image_grid(
    images: Sequence[Any],
    columns: int | None = None,
    titles: Sequence[str] | None = None,
    padding: int = 4,
) -> np.ndarray:
    """Lay images out row by row in one uint8 RGB image on a white background.

    Images of different sizes are centred in cells of the largest size. ``columns`` defaults
    to all images in one row; ``titles`` (one per image) are written above the cells.
    """
    if len(images) == 0:
        raise InputError("images is empty; pass at least one image")
    if titles is not None and len(titles) != len(images):
        raise InputError(f"titles has {len(titles)} entries for {len(images)} images")
    padding = _checks.non_negative_int(padding, "padding")
    columns = len(images) if columns is None else _checks.positive_int(columns, "columns")
    cv2 = _cv2()
    tiles = [_as_rgb_uint8(image, f"images[{i}]") for i, image in enumerate(images)]
    rows = -(-len(tiles) // columns)
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    title_h = 22 if titles else 0
    step_h, step_w = cell_h + title_h + padding, cell_w + padding
    canvas = np.full((rows * step_h + padding, columns * step_w + padding, 3), 255, np.uint8)
    for index, tile in enumerate(tiles):
        top = (index // columns) * step_h + padding
        left = (index % columns) * step_w + padding
        if titles:
            cv2.putText(canvas, str(titles[index]), (left + 2, top + 15),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
        y = top + title_h + (cell_h - tile.shape[0]) // 2
        x = left + (cell_w - tile.shape[1]) // 2
        canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return canvas
