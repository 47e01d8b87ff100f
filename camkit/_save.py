"""``camkit.save``: an explanation's overlays, raw maps and a table of results, in a folder.

Layout of ``out_dir`` (what ``camkit explain --out`` writes, and :func:`camkit.report` reads):

- ``{image}/{method}.png``: the map blended over the image (RGB, colours as shown);
- ``{image}/{method}.npy``: the map itself, float32, at the size it was explained;
- ``results.csv``: one row per image, method and target: ``image`` (the name), ``source``
  (the file it came from, if any), ``method``, ``layers``, ``target`` (the class index),
  ``label`` (its name, where known), ``score`` (the target's score), ``overlay``, ``map``
  (paths relative to ``out_dir``). Rows are appended, so that a run can go on where another
  stopped.

With ``K`` targets per sample (``TopK``, boxes) the files are ``{method}-{k}.png`` and ``.npy``,
``k`` the target's rank.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ._base import Explanation
from ._errors import InputError
from ._output import unit_maps
from ._overlay import overlay, save_image

__all__ = ["RESULTS", "Result", "read_results", "save"]

#: The table of results in an output folder.
RESULTS = "results.csv"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class Result:
    """One row of ``results.csv``: one map of one image."""

    image: str
    source: str
    method: str
    layers: str
    target: int
    label: str
    score: float
    overlay: str
    map: str


def _safe(name: str) -> str:
    """A file-name part: what is not a letter, digit or ``._+-`` becomes ``_``."""
    return _UNSAFE.sub("_", name).strip("._") or "image"


def save(
    explanation: Explanation,
    images: Any,
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    colormap: str = "jet",
    alpha: float = 0.5,
) -> list[Result]:
    """Write each map of ``explanation`` over its image, the map as ``.npy``, and a row of
    ``results.csv`` per map, into ``out_dir``; return the rows written.

    ``images`` are what the maps explain, one per sample, as :func:`camkit.overlay` draws them
    (RGB ``(H, W, 3)`` uint8 or float in ``[0, 1]``, or channels-first): the photos before
    preprocessing, not the normalized model inputs. ``names`` name each sample's folder
    (default ``image-0000``, ...); ``sources`` the file each came from; ``labels`` the class
    names, by index.
    """
    count = len(explanation)
    pictures = list(images)
    if len(pictures) != count:
        raise InputError(
            f"images has {len(pictures)} images for an explanation of {count}; pass the "
            "images that were explained, one per sample"
        )
    names = [f"image-{i:04d}" for i in range(count)] if names is None else list(names)
    sources = [""] * count if sources is None else list(sources)
    for argument, given in (("names", names), ("sources", sources)):
        if len(given) != count:
            raise InputError(f"{argument} has {len(given)} entries for {count} images")
    root = Path(out_dir)
    explanation = explanation.numpy()
    cams = unit_maps(explanation.cams)
    several = explanation.targets.ndim == 2
    rows = []
    for i in range(count):
        folder = _safe(names[i])
        columns = range(cams.shape[1]) if several else [None]
        for k in columns:
            cam = cams[i] if k is None else cams[i, k]
            target = int(explanation.targets[i] if k is None else explanation.targets[i, k])
            score = float(explanation.scores[i] if k is None else explanation.scores[i, k])
            stem = _safe(explanation.method) + ("" if k is None else f"-{k}")
            picture_path = Path(folder) / f"{stem}.png"
            map_path = Path(folder) / f"{stem}.npy"
            save_image(root / picture_path, overlay(pictures[i], cam, alpha, colormap))
            np.save(root / map_path, cam)
            label = labels[target] if labels is not None and 0 <= target < len(labels) else ""
            rows.append(
                Result(names[i], sources[i], explanation.method, "+".join(explanation.layers),
                       target, label, score, picture_path.as_posix(), map_path.as_posix())
            )  # fmt: skip
    _append(root / RESULTS, rows)
    return rows


def _append(path: Path, rows: Sequence[Result]) -> None:
    header = [field.name for field in fields(Result)]
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        if new:
            writer.writerow(header)
        writer.writerows([[getattr(row, name) for name in header] for row in rows])


def read_results(out_dir: str | Path) -> list[Result]:
    """The rows of ``out_dir``'s ``results.csv`` (none if there is none yet); a row written
    again (a resumed run) counts once, the last."""
    path = Path(out_dir) / RESULTS
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as file:
        found = {}
        for record in csv.DictReader(file):
            row = Result(
                record["image"], record["source"], record["method"], record["layers"],
                int(record["target"]), record["label"], float(record["score"]),
                record["overlay"], record["map"],
            )  # fmt: skip
            found[(row.image, row.overlay)] = row
    return list(found.values())
