"""Digit scenes for the worked examples: two handwritten digits on a 32 x 32 canvas.

scikit-learn's digits (8 x 8, offline) are doubled to 16 x 16 and placed at random, without
overlap, so that each scene has two labels (the multi-label example) and two boxes (the
detection example) whose positions the maps can be checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CANVAS = 32
DIGIT = 16
CLASSES = 10


@dataclass(frozen=True)
class Scenes:
    """``images`` ``(N, 1, 32, 32)`` float32 in ``[0, 1]``; ``boxes`` ``(N, 2, 4)`` the digits'
    corners ``(x1, y1, x2, y2)`` in pixels; ``labels`` ``(N, 2)`` their digits (never equal)."""

    images: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray


def digit_scenes(count: int, seed: int) -> Scenes:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 1, CANVAS, CANVAS), np.float32)
    boxes = np.zeros((count, 2, 4), np.float32)
    labels = np.zeros((count, 2), np.int64)
    for n in range(count):
        corners = _corners(rng)
        while not _apart(*corners):  # draw both again: some first places leave no room
            corners = _corners(rng)
        first = rng.integers(len(digits.images))
        second = rng.choice(np.flatnonzero(digits.target != digits.target[first]))
        for slot, (index, box) in enumerate(zip((first, second), corners, strict=True)):
            x, y = int(box[0]), int(box[1])
            glyph = np.kron(digits.images[index] / 16.0, np.ones((2, 2)))
            images[n, 0, y : y + DIGIT, x : x + DIGIT] = glyph
            boxes[n, slot] = box
            labels[n, slot] = digits.target[index]
    return Scenes(images, boxes, labels)


def _corners(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x1, y1, x2, y2 = rng.integers(0, CANVAS - DIGIT + 1, size=4)
    return (np.array([x1, y1, x1 + DIGIT, y1 + DIGIT], np.float32),
            np.array([x2, y2, x2 + DIGIT, y2 + DIGIT], np.float32))  # fmt: skip


def _apart(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two boxes overlap by less than a quarter of a digit's width on either axis."""
    overlap_x = min(first[2], second[2]) - max(first[0], second[0])
    overlap_y = min(first[3], second[3]) - max(first[1], second[1])
    return min(overlap_x, overlap_y) < DIGIT / 4


def scene_picture(image: np.ndarray, scale: int = 4) -> np.ndarray:
    """A grayscale scene ``(H, W)`` enlarged ``scale`` times by pixel repetition, as RGB."""
    return np.kron(image, np.ones((scale, scale)))[..., None].repeat(3, -1)


def mass_inside(cam: np.ndarray, box: np.ndarray) -> float:
    """The share of a map's total inside a box (corners, in pixels)."""
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    total = float(cam.sum())
    return float(cam[y1:y2, x1:x2].sum()) / total if total > 0 else 0.0
