"""Writing the worked examples' figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import camkit


def write_figure(grid: np.ndarray, output: Path) -> None:
    """Save an RGB uint8 figure (``camkit.image_grid``'s) as a PNG, creating its folder."""
    camkit.save_image(output, grid)
    print(f"wrote {output}")
