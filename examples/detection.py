"""Worked example: a detector, one map per detected box from one forward pass.

A small YOLO-style detector (a grid of 8 x 8 anchors, each a box and ten sigmoid class scores,
output ``(N, 4 + 10, 64)`` as YOLOv8 lays it out) learns to find the two digits of each scene
(scikit-learn's digits, offline, trained in seconds on a CPU). ``BoxTarget(boxes, labels,
per_box=True)`` then explains every box at once: each box is matched to the prediction that
overlaps it most, and its map is the gradient of that prediction's class score plus its IoU
(pytorch-grad-cam's Faster R-CNN rule). ``cams`` is ``(N, 2, 32, 32)``, one map per box; the
script reports how many boxes the detector matched and how often a box's map puts more of its
mass inside that box than inside the other.

The method is LayerCAM: a box's score is local, so its gradient is zero outside the anchor's
receptive field, and a method that weighs each position by its own gradient keeps the map
there. Grad-CAM averages each channel's gradient over the whole map first, and its maps of
these boxes spread over the background (swap the method to see it).

With a torchvision detector (``fasterrcnn_resnet50_fpn``, a list of per-image dicts) or a
Hugging Face DETR (``logits`` and ``pred_boxes``), the call is the same; only ``layer`` and the
boxes' format (``xyxy`` pixels, normalized ``cxcywh``) change.

Run: ``python examples/detection.py [--output detection.png]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from figures import write_figure
from scenes import CANVAS, CLASSES, DIGIT, digit_scenes, mass_inside, scene_picture
from torch import nn

import camkit
from camkit.targets import BoxTarget

GRID = 8
STRIDE = CANVAS // GRID


class Detector(nn.Module):
    """Backbone to 8 x 8 cells; each cell predicts a ``cxcywh`` box around its centre and the
    sigmoid scores of the ten digits: ``(N, 4 + 10, 64)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),  # "backbone.5": 16 x 16, explained
            nn.MaxPool2d(2), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Conv2d(64, 4 + CLASSES, 1)
        rows, columns = np.divmod(np.arange(GRID * GRID), GRID)
        centres = np.stack([(columns + 0.5) * STRIDE, (rows + 0.5) * STRIDE]).astype(np.float32)
        self.register_buffer("centres", torch.from_numpy(centres))  # (2, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        boxes, logits = self.decoded(x)
        return torch.cat([boxes, torch.sigmoid(logits)], dim=1)

    def decoded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The boxes ``(N, 4, 64)`` and the class logits ``(N, 10, 64)`` (for training)."""
        raw = self.head(self.backbone(x)).flatten(2)
        centre = self.centres + STRIDE * torch.tanh(raw[:, :2])
        size = DIGIT * torch.exp(0.5 * torch.tanh(raw[:, 2:4]))
        return torch.cat([centre, size], dim=1), raw[:, 4:]


def _cells(boxes: np.ndarray) -> np.ndarray:
    """The cell holding each box's centre, ``(N, 2)``."""
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2
    column, row = (np.minimum(centres // STRIDE, GRID - 1).astype(np.int64)[..., i] for i in (0, 1))
    return row * GRID + column


def _cxcywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1
    )


def train(model: Detector, steps: int = 800, seed: int = 1) -> Detector:
    scenes = digit_scenes(4000, seed)
    images = torch.from_numpy(scenes.images)
    cells = torch.from_numpy(_cells(scenes.boxes))
    labels = torch.from_numpy(scenes.labels)
    boxes = torch.from_numpy(_cxcywh(scenes.boxes))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        rows = torch.from_numpy(rng.integers(0, len(images), 64))
        predicted, logits = model.decoded(images[rows])
        hot = torch.zeros_like(logits)
        batch = torch.arange(len(rows))[:, None].expand(-1, 2)
        hot[batch, labels[rows], cells[rows]] = 1.0
        # two positives among 640 cell-classes: weigh them up, or "nothing anywhere" wins
        classes = nn.functional.binary_cross_entropy_with_logits(
            logits, hot, pos_weight=torch.tensor(20.0)
        )
        at_digits = predicted[batch, :, cells[rows]]  # (B, 2, 4) at the digits' cells
        loss = classes + nn.functional.l1_loss(at_digits, boxes[rows]) / STRIDE
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def main(output: Path | None = None, steps: int = 800) -> dict[str, float]:
    model = train(Detector(), steps)
    test = digit_scenes(64, seed=2)
    x = torch.from_numpy(test.images)
    boxes = _cxcywh(test.boxes)  # in the predictions' format
    each = camkit.explain(model, x, "layercam", "backbone.5",
                          target=BoxTarget(boxes, test.labels, per_box=True))  # fmt: skip
    matched = each.targets >= 0
    on_own = [
        mass_inside(each.cams[n, k], test.boxes[n, k])
        > mass_inside(each.cams[n, k], test.boxes[n, 1 - k])
        for n in range(len(x))
        for k in range(2)
        if matched[n, k]
    ]
    summary = {
        "boxes matched": float(matched.mean()),
        "maps on their own box": float(np.mean(on_own)),
    }
    for name, value in summary.items():
        print(f"{name}: {value:.0%}")
    if output is not None:
        import cv2

        tiles, titles = [], []
        for n in range(4):
            picture = scene_picture(test.images[n, 0])
            tiles.append(picture)
            titles.append("scene")
            for k in range(2):
                tile = camkit.overlay(picture, each.cams[n, k])
                x1, y1, x2, y2 = (int(v * 4) for v in test.boxes[n, k])
                cv2.rectangle(tile, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), 1)
                tiles.append(tile)
                titles.append(f"box {k}: digit {test.labels[n, k]}, S={each.scores[n, k]:.2f}")
        write_figure(camkit.image_grid(tiles, columns=3, titles=titles), output)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("detection.png"))
    main(parser.parse_args().output)
