"""Worked example: a multi-label model, one map per label from one forward pass.

A small CNN learns which two of the ten digits a scene holds (a sigmoid per digit, trained with
binary cross-entropy on scikit-learn's digits, offline, in seconds on a CPU). Then
``target=Classes(labels, score="sigmoid")`` explains each scene's two digits at once, each map
the gradient of that digit's sigmoid probability: ``cams`` is ``(N, 2, 32, 32)``. A faithful map
of a digit lies on that digit, so the script reports how often each map puts more of its mass
in its own digit's box than in the other's. ``TopK(2, score="sigmoid")`` would explain the
model's own two most probable digits instead.

Run: ``python examples/multilabel.py [--output multilabel.png]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from figures import write_figure
from scenes import CLASSES, digit_scenes, mass_inside, scene_picture
from torch import nn

import camkit
from camkit.targets import Classes, TopK


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),  # "6": the 16 x 16 map explained
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, CLASSES),
    )  # fmt: skip


def train(model: nn.Module, steps: int = 800, seed: int = 1) -> nn.Module:
    scenes = digit_scenes(4000, seed)
    images = torch.from_numpy(scenes.images)
    hot = torch.zeros(len(images), CLASSES).scatter_(1, torch.from_numpy(scenes.labels), 1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        rows = torch.from_numpy(rng.integers(0, len(images), 64))
        loss = nn.functional.binary_cross_entropy_with_logits(model(images[rows]), hot[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def main(output: Path | None = None, steps: int = 800) -> dict[str, float]:
    model = train(build_model(), steps)
    test = digit_scenes(64, seed=2)
    x = torch.from_numpy(test.images)
    top = camkit.explain(model, x, "gradcam", "6", target=TopK(2, score="sigmoid"))
    found = np.mean([set(top.targets[n]) == set(test.labels[n]) for n in range(len(x))])
    each = camkit.explain(model, x, "gradcam", "6", target=Classes(test.labels, score="sigmoid"))
    on_own = [
        mass_inside(each.cams[n, k], test.boxes[n, k])
        > mass_inside(each.cams[n, k], test.boxes[n, 1 - k])
        for n in range(len(x))
        for k in range(2)
    ]
    summary = {"both digits found": float(found), "maps on their own digit": float(np.mean(on_own))}
    for name, value in summary.items():
        print(f"{name}: {value:.0%}")
    if output is not None:
        tiles, titles = [], []
        for n in range(4):
            picture = scene_picture(test.images[n, 0])
            tiles.append(picture)
            titles.append("scene")
            for k in range(2):
                tiles.append(camkit.overlay(picture, each.cams[n, k]))
                titles.append(f"digit {test.labels[n, k]} {each.scores[n, k]:.0%}")
        write_figure(camkit.image_grid(tiles, columns=3, titles=titles), output)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("multilabel.png"))
    main(parser.parse_args().output)
