"""Overlays and grids: shapes, dtypes, blending arithmetic and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

import camkit

rng = np.random.default_rng(0)
IMAGE = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
CAM = rng.uniform(size=(5, 6)).astype(np.float32)


def test_overlay_is_uint8_rgb_at_image_size():
    out = camkit.overlay(IMAGE, CAM)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8


def test_alpha_zero_is_the_image_and_float_input_matches_uint8():
    assert np.array_equal(camkit.overlay(IMAGE, CAM, alpha=0.0), IMAGE)
    as_float = IMAGE.astype(np.float32) / 255
    assert np.array_equal(camkit.overlay(as_float, CAM), camkit.overlay(IMAGE, CAM))


def test_alpha_one_is_the_colormap_and_hot_spots_are_red():
    cam = np.zeros((20, 30), np.float32)
    cam[5, 7] = 1.0
    out = camkit.overlay(IMAGE, cam, alpha=1.0, colormap="jet")
    red, _, blue = (int(v) for v in out[5, 7])
    assert red > 100 and blue < 50  # jet's top is dark red
    assert int(out[0, 0, 2]) > int(out[0, 0, 0])  # jet's bottom is blue


def test_channels_first_and_grayscale_images():
    chw = np.moveaxis(IMAGE, -1, 0)
    assert np.array_equal(camkit.overlay(chw, CAM), camkit.overlay(IMAGE, CAM))
    assert camkit.overlay(IMAGE[..., 0], CAM).shape == (20, 30, 3)


def test_raw_maps_are_normalized():
    scaled = camkit.overlay(IMAGE, CAM * 40 - 3)
    expected = camkit.overlay(IMAGE, (CAM - CAM.min()) / (CAM.max() - CAM.min()))
    assert np.abs(scaled.astype(int) - expected).max() <= 1


@pytest.mark.parametrize(
    ("image", "cam", "kwargs", "match"),
    [
        (IMAGE[..., :2], CAM, {}, r"image has shape \(20, 30, 2\)"),
        (IMAGE * 2.0, CAM, {}, "float images must lie in"),
        (IMAGE, np.stack([CAM, CAM]), {}, r"cam has shape \(2, ...\).*cams\[i\]"),
        (IMAGE, CAM, {"colormap": "rainbowish"}, "colormap='rainbowish'"),
        (IMAGE, CAM, {"alpha": 2}, "alpha=2"),
    ],
)
def test_clear_errors(image, cam, kwargs, match):
    with pytest.raises(camkit.InputError, match=match):
        camkit.overlay(image, cam, **kwargs)


def test_grid_layout():
    tiles = [IMAGE, IMAGE[:10], IMAGE]
    grid = camkit.image_grid(tiles, columns=2, padding=4)
    assert grid.shape == (2 * (20 + 4) + 4, 2 * (30 + 4) + 4, 3)
    assert np.array_equal(grid[4:24, 4:34], IMAGE)
    titled = camkit.image_grid(tiles, titles=["a", "b", "c"])
    assert titled.shape[0] > 20 + 8 and titled.shape[1] == 3 * (30 + 4) + 4
    with pytest.raises(camkit.InputError, match="titles has 1 entries for 3 images"):
        camkit.image_grid(tiles, titles=["a"])


def test_a_signal_is_drawn_over_its_map():
    signal = np.stack([np.sin(np.linspace(0, 6, 50)), np.cos(np.linspace(0, 6, 50))])  # (C, L)
    cam = np.zeros(50, np.float32)
    cam[10] = 1.0  # the hot spot is a fifth of the way along
    out = camkit.overlay(signal, cam, alpha=1.0)
    assert out.shape == (128, 256, 3) and out.dtype == np.uint8
    hottest = int(np.argmax(out[:, :, 0].astype(int) - out[:, :, 2].astype(int), axis=1)[64])
    assert abs(hottest - 10.5 * 256 / 50) <= 6  # red where the map peaks, along the signal
    assert np.array_equal(camkit.overlay(signal.T, cam, alpha=1.0), out)  # (L, C) alike
    with pytest.raises(camkit.InputError, match="signal as \\(50,\\)"):
        camkit.overlay(np.zeros((3, 49)), cam)


def test_a_volume_is_shown_as_slices():
    volume = rng.uniform(size=(6, 20, 24))
    cam = rng.uniform(size=(6, 5, 6)).astype(np.float32)
    out = camkit.overlay(volume, cam, slices=3)  # slices 0, 2 (rounded from 2.5) and 5
    single = camkit.overlay(volume, cam, slices=[2])
    assert out.dtype == np.uint8 and out.shape[1] > 3 * 96 and single.shape[1] < out.shape[1]
    assert np.array_equal(camkit.overlay(volume[None], cam, slices=3), out)  # (C, D, H, W)
    with pytest.raises(camkit.InputError, match="slices=\\[9\\] reaches past the map's 6"):
        camkit.overlay(volume, cam, slices=[9])
    with pytest.raises(camkit.InputError, match="map of 6 slices.*\\(C, 6, H, W\\)"):
        camkit.overlay(volume[:4], cam)
