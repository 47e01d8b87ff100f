"""Writing the worked examples' figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_figure(grid: np.ndarray, output: Path) -> None:
    """Save an RGB uint8 figure (``camkit.image_grid``'s) as a PNG, creating its folder."""
    import cv2

    output.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(output), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"wrote {output}")
