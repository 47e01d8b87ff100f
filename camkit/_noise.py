"""Reproducible host noise for the smoothed methods (SS-CAM, Smooth Grad-CAM++).

Each draw is seeded by the user's seed and the draw's own coordinates (channel, repeat), never
by its place in a batch: so ``batch_size`` changes memory only, and an image gets the same
noise alone as inside any batch. Drawn on the host as numpy, every backend sees the same noise.
"""

from __future__ import annotations

import numpy as np

__all__ = ["normal", "run_seed"]


def run_seed(seed: int | None) -> int:
    """The seed of one run: ``seed``, or fresh entropy where it is ``None``."""
    return int(np.random.SeedSequence().entropy) if seed is None else seed  # type: ignore[arg-type]


def normal(seed: int, coordinates: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 noise of ``shape`` for the draw at ``coordinates``."""
    return np.random.default_rng([seed, *coordinates]).standard_normal(shape, dtype=np.float32)
