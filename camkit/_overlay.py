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
from ._output import host_array, unit_maps

__all__ = ["COLORMAPS", "IMAGE_SUFFIXES", "image_grid", "overlay", "read_image", "save_image"]

#: Colormap names accepted by :func:`overlay`, each an OpenCV ``COLORMAP_*``.
COLORMAPS = (
    "jet", "turbo", "viridis", "inferno", "magma", "plasma", "hot", "bone", "parula", "rainbow",
)  # fmt: skip


#: The image files :func:`read_image` reads (what OpenCV decodes without extra codecs).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _cv2() -> Any:
    import cv2  # deferred: OpenCV is heavy and only needed to draw

    return cv2


def save_image(path: Any, image: Any) -> None:
    """Write an RGB image (``overlay``'s, ``image_grid``'s; uint8 or float in ``[0, 1]``) to
    ``path`` (PNG, JPEG, ... by its suffix), creating its folder. OpenCV stores channels as
    BGR: writing an RGB array with ``cv2.imwrite`` swaps red and blue, this does not."""
    from pathlib import Path

    picture = _as_rgb_uint8(image, "image")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    cv2 = _cv2()
    if not cv2.imwrite(str(target), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise InputError(f"could not write an image to path={str(path)!r}; choose another path")


def read_image(path: Any) -> np.ndarray:
    """An image file as uint8 RGB ``(H, W, 3)`` (grayscale made RGB, alpha dropped); an
    :class:`~camkit.InputError` naming the file if it cannot be read."""
    cv2 = _cv2()
    data = np.fromfile(str(path), dtype=np.uint8) if _exists(path) else None
    decoded = None if data is None or data.size == 0 else cv2.imdecode(data, cv2.IMREAD_COLOR)
    if decoded is None:
        raise InputError(f"could not read an image from {str(path)!r} (missing or not an image)")
    return np.ascontiguousarray(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB))


def _exists(path: Any) -> bool:
    from pathlib import Path

    return Path(path).is_file()


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


def _heat(cam: Any) -> np.ndarray:
    """One map as float32 in ``[0, 1]``: by its own range where it leaves ``[0, 1]`` (before a
    resize can miss its extremes)."""
    heat = unit_maps(cam)  # uint8 maps as m / 255, device arrays fetched
    if heat.size == 0 or not 1 <= heat.ndim <= 3:
        raise InputError(
            f"cam has shape {np.asarray(cam).shape}; overlay takes one map, (h, w) for an "
            "image, (l,) for a signal or (d, h, w) for a volume: pass explanation.cams[i]"
        )
    if not np.isfinite(heat).all():
        raise InputError(
            "cam holds NaN or inf; overlay needs a finite map (a sample explained with "
            "nonfinite='nan' has no map to show)"
        )
    low, high = float(np.min(heat)), float(np.max(heat))
    if low < 0.0 or high > 1.0:
        heat = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    return heat


def _colored(heat: np.ndarray, size: tuple[int, int], colormap: str) -> np.ndarray:
    """A ``[0, 1]`` map ``(h, w)`` resized to ``size`` ``(H, W)`` and colored, uint8 RGB."""
    cv2 = _cv2()
    if heat.shape != size:
        heat = cv2.resize(heat, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    code = getattr(cv2, f"COLORMAP_{colormap.upper()}")
    colored = cv2.applyColorMap(np.round(heat * 255.0).astype(np.uint8), code)
    return cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)  # type: ignore[no-any-return]


def _blend(picture: np.ndarray, colored: np.ndarray, alpha: float) -> np.ndarray:
    blended = (1.0 - alpha) * picture.astype(np.float32) + alpha * colored.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def _signal_picture(signal: Any, length: int, height: int) -> np.ndarray:
    """The signal's channels, ``(L,)``, ``(C, L)`` or ``(L, C)``, drawn as dark lines on white,
    ``(height, width)`` with at least 2 pixels a sample."""
    cv2 = _cv2()
    values = np.asarray(signal, dtype=np.float32)
    if values.ndim == 1:
        values = values[None]
    elif values.ndim == 2 and values.shape[-1] != length and values.shape[0] == length:
        values = values.T
    if values.ndim != 2 or values.shape[-1] != length or not np.isfinite(values).all():
        raise InputError(
            f"image has shape {np.asarray(signal).shape}; with a map of {length} samples, pass "
            f"the signal as ({length},), (channels, {length}) or ({length}, channels), finite"
        )
    width = max(2 * length, 256)
    canvas = np.full((height, width, 3), 255, np.uint8)
    low, high = float(values.min()), float(values.max())
    scale = (high - low) or 1.0
    xs = (np.arange(length) + 0.5) * width / length
    for channel in values:
        ys = (1 - (channel - low) / scale) * (height - 9) + 4
        points = np.stack([xs, ys], axis=1).round().astype(np.int32)
        cv2.polylines(canvas, [points], False, (20, 20, 20), 1, cv2.LINE_AA)
    return canvas


#: The smallest side a volume's slice is shown at.
_SLICE_SIZE = 96


def _volume_slices(volume: Any, depth: int, chosen: Sequence[int]) -> list[np.ndarray]:
    """The slices ``chosen`` of a volume ``(D, H, W)``, ``(C, D, H, W)`` or ``(D, H, W, C)``
    (C 1 or 3) as RGB uint8 images."""
    values = np.asarray(volume)
    if values.ndim == 4 and values.shape[0] in (1, 3) and values.shape[1] == depth:
        values = np.moveaxis(values, 0, -1)
    if values.ndim not in (3, 4) or values.shape[0] != depth:
        raise InputError(
            f"cam has shape ({depth}, ...): a volume's map of {depth} slices, but image has "
            f"shape {np.asarray(volume).shape}; for an image pass one map, explanation.cams[i] "
            f"for the i-th; for a volume pass it as ({depth}, H, W), (C, {depth}, H, W) or "
            f"({depth}, H, W, C)"
        )
    if np.issubdtype(values.dtype, np.floating):
        low, high = float(values.min()), float(values.max())
        values = (values - low) / ((high - low) or 1.0)  # a volume's intensities, any unit
    pictures = [_as_rgb_uint8(values[index], f"image[{index}]") for index in chosen]
    scale = max(1, -(-_SLICE_SIZE // min(pictures[0].shape[:2])))  # small slices, enlarged
    cv2 = _cv2()
    return [
        cv2.resize(p, (p.shape[1] * scale, p.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
        for p in pictures
    ]


def overlay(
    image: Any,
    cam: Any,
    alpha: float = 0.5,
    colormap: str = "jet",
    *,
    slices: int | Sequence[int] = 8,
) -> np.ndarray:
    """Blend a colored map over what it explains: ``(1 - alpha) * image + alpha * colormap(cam)``.

    - An image: ``image`` RGB ``(H, W, 3)`` (or channels-first, or grayscale), uint8 or float
      in ``[0, 1]``; ``cam`` one map ``(h, w)``, resized bilinearly to ``(H, W)``.
    - A signal: ``cam`` ``(l,)``; ``image`` the signal ``(L,)``, ``(C, L)`` or ``(L, C)``,
      drawn as lines over the map laid out along it.
    - A volume: ``cam`` ``(d, h, w)`` at the volume's depth; ``image`` ``(D, H, W)``,
      ``(C, D, H, W)`` or ``(D, H, W, C)``; ``slices`` (how many, evenly spaced, or which) are
      shown side by side, each titled with its index.

    ``cam`` is min-max normalized if its values leave ``[0, 1]``. Returns uint8 RGB.
    """
    alpha = _checks.number(alpha, "alpha", minimum=0, maximum=1)
    _checks.one_of(colormap, "colormap", COLORMAPS)
    cam = host_array(cam)
    heat = _heat(cam[0] if cam.ndim == 3 and cam.shape[0] == 1 else cam)
    if heat.ndim == 1:
        picture = _signal_picture(image, len(heat), height=128)
        strip = heat[None, :]
        return _blend(picture, _colored(strip, picture.shape[:2], colormap), alpha)
    if heat.ndim == 3:
        depth = heat.shape[0]
        chosen = (
            np.linspace(0, depth - 1, min(_checks.positive_int(slices, "slices"), depth))
            .round().astype(int).tolist()
            if not isinstance(slices, list | tuple)
            else [_checks.non_negative_int(index, "slices") for index in slices]
        )  # fmt: skip
        if any(index >= depth for index in chosen):
            raise InputError(f"slices={slices!r} reaches past the map's {depth} slices")
        pictures = _volume_slices(image, depth, chosen)
        tiles = [
            overlay(picture, heat[index], alpha, colormap)
            for picture, index in zip(pictures, chosen, strict=True)
        ]
        return image_grid(tiles, titles=[f"slice {index}" for index in chosen])
    picture = _as_rgb_uint8(image, "image")
    return _blend(picture, _colored(heat, picture.shape[:2], colormap), alpha)


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
