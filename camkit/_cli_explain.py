"""``camkit explain``: explain image files with a saved model, from the command line.

The run: find the images (files, and folders walked recursively for the suffixes in
:data:`camkit._overlay.IMAGE_SUFFIXES`), load the model, then per batch read the images (an
unreadable file is reported and skipped, never the end of the run), preprocess them, explain
them with each method and write the overlays, maps and ``results.csv`` rows
(:func:`camkit.save`); at the end, ``report.html`` (:func:`camkit.report`). Images whose maps
an earlier run already wrote to the same folder are not explained again.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ._api import explain, methods
from ._errors import InputError
from ._overlay import COLORMAPS, IMAGE_SUFFIXES, read_image
from ._report import report
from ._save import read_results, save
from .targets import TopK

__all__ = ["add_explain_command"]

_DESCRIPTION = (
    "Explain image files, and the images in folders (recursively), with a model. Writes per "
    "image the overlays (PNG) and maps (float32 .npy), results.csv and report.html into --out; "
    "an unreadable file is reported and skipped; run again into the same folder to explain "
    "only what is missing."
)

#: ``preprocess(images) -> inputs``: RGB uint8 ``(H, W, 3)`` images to the model's batch.
Preprocess = Callable[[Sequence[np.ndarray]], Any]


@dataclass(frozen=True)
class Image:
    """An image file and the name its outputs are written under (its path below the folder
    it was found in, without suffix)."""

    path: Path
    name: str


def find_images(given: Sequence[str]) -> list[Image]:
    """The image files among ``given`` and below its folders, in sorted order, each named
    uniquely."""
    found: list[Image] = []
    for entry in given:
        path = Path(entry)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            found += [Image(p, p.relative_to(path).with_suffix("").as_posix()) for p in files]
        elif path.is_file():
            found.append(Image(path, path.stem))
        else:
            raise InputError(f"{entry!r} is neither an image file nor a folder")
    names: dict[str, int] = {}
    unique = []
    for image in found:
        seen = names.get(image.name, 0)
        names[image.name] = seen + 1
        unique.append(image if not seen else Image(image.path, f"{image.name}~{seen}"))
    return unique


def load_model(spec: str, device: str | None) -> tuple[Any, Preprocess | None]:
    """The model named by ``spec``, and its own preprocessing if its factory gives one.

    ``spec`` is a Keras file (``.keras``, ``.h5``), a PyTorch file (``.pt2`` from
    ``torch.export``, unflattened into its modules, or ``.pt``/``.pth`` holding a pickled
    module), or
    ``package.module:factory``, a function returning the model or ``(model, preprocess)``.
    """
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in (".keras", ".h5"):
        keras = importlib.import_module("keras")
        return keras.saving.load_model(path, compile=False), None
    if suffix in (".pt2", ".pt", ".pth"):
        torch = importlib.import_module("torch")
        if suffix == ".pt2":  # unflattened: the exported modules, which hooks can reach
            model = torch.export.unflatten(torch.export.load(str(path)))
        else:
            model = torch.load(str(path), weights_only=False, map_location="cpu")
        return (model.to(device) if device else model), None
    module_name, _, function = spec.partition(":")
    if path.exists() or not module_name or not function:
        raise InputError(
            f"--model {spec!r}: give a .keras/.h5 file, a .pt2 (torch.export) or .pt/.pth "
            "(pickled torch module) file, or package.module:factory"
        )
    sys.path.insert(0, str(Path.cwd()))  # a factory module in the working folder
    try:
        made = getattr(importlib.import_module(module_name), function)()
    except (ImportError, AttributeError) as error:
        raise InputError(f"--model {spec!r} could not be imported: {error}") from error
    finally:
        sys.path.remove(str(Path.cwd()))
    model, preprocess = made if isinstance(made, tuple) else (made, None)
    if device and hasattr(model, "to"):
        model = model.to(device)
    return model, preprocess


def _channels_first(model: Any) -> bool:
    """Whether ``model`` takes channels-first images: a torch module that is not Keras'."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(model, torch.nn.Module):
        return False
    layers = getattr(sys.modules.get("keras"), "layers", None)
    return layers is None or not isinstance(model, layers.Layer)


def default_preprocess(args: argparse.Namespace, model: Any) -> Preprocess:
    """Resize to ``--resize``, scale to ``--range``, ``--mean``/``--std``, ``--bgr`` order,
    in the model's layout (channels-first for PyTorch, channels-last otherwise)."""
    import cv2

    height, width = args.resize
    scale = 1.0 if args.range == "0-255" else 1 / 255
    mean = np.asarray(args.mean, np.float32)
    std = np.asarray(args.std, np.float32)
    first = _channels_first(model)

    def preprocess(images: Sequence[np.ndarray]) -> Any:
        resized = [cv2.resize(i, (width, height), interpolation=cv2.INTER_AREA) for i in images]
        batch = np.stack(resized).astype(np.float32) * scale
        batch = batch[..., ::-1] if args.bgr else batch
        batch = (batch - mean) / std
        if not first:
            return np.ascontiguousarray(batch, np.float32)
        torch = sys.modules["torch"]  # a torch model: torch is imported
        tensor = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
        return tensor.to(args.device) if args.device else tensor

    return preprocess


def parse_target(text: str | None, labels: Sequence[str] | None) -> Any:
    """``--target``: none (top-1), a class index, a class name (``--labels``), ``topk:K``."""
    if text is None:
        return None
    if text.startswith("topk:"):
        return TopK(int(text.removeprefix("topk:")))
    if text.lstrip("-").isdigit():
        return int(text)
    if labels is not None and text in labels:
        return labels.index(text)
    raise InputError(
        f"--target {text!r}: give a class index, topk:K, or a class name listed in --labels"
    )


class Bar:
    """Images done, rate and time left: a bar redrawn in place on a terminal, a plain line per
    batch in a log."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream = total, stream
        self.done = 0
        self.started = time.perf_counter()
        self.terminal = bool(getattr(stream, "isatty", bool)())

    def advance(self, count: int) -> None:
        self.done += count
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        status = f"{self.done}/{self.total} images, {rate:.2f}/s, ETA {left:.0f} s"
        if self.terminal:
            filled = int(30 * self.done / max(self.total, 1))
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {status}")
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(f"camkit: {status}\n")
        self.stream.flush()


def _done(out: Path, names: set[str], method: str) -> set[str]:
    """The images whose ``method`` maps an earlier run wrote to ``out`` (files present)."""
    return {
        row.image
        for row in read_results(out)
        if row.method == method and row.image in names and (out / row.map).exists()
    }


def run_explain(args: argparse.Namespace) -> int:
    images = find_images(args.images)
    if not images:
        raise InputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {args.images}")
    labels = None
    if args.labels:
        labels = Path(args.labels).read_text(encoding="utf-8").splitlines()
    target = parse_target(args.target, labels)
    model, preprocess = load_model(args.model, args.device)
    preprocess = preprocess or default_preprocess(args, model)
    chosen = args.method or ["gradcam"]
    out = Path(args.out)
    names = {image.name for image in images}
    pending = {m: names - _done(out, names, m) for m in chosen}
    todo = [image for image in images if any(image.name in p for p in pending.values())]
    if len(todo) < len(images):
        print(f"camkit: {len(images) - len(todo)} images already done in {out}", file=sys.stderr)
    bar = Bar(len(todo), sys.stderr)
    skipped = 0
    for start in range(0, len(todo), args.batch_size):
        batch, pictures = [], []
        for image in todo[start : start + args.batch_size]:
            try:
                pictures.append(read_image(image.path))
                batch.append(image)
            except InputError as error:
                skipped += 1
                lead = "\n" if bar.terminal else ""
                print(f"{lead}camkit: skipped {image.path}: {error}", file=sys.stderr)
        if batch:
            inputs = preprocess(pictures)
            for method in chosen:
                rows = [i for i, image in enumerate(batch) if image.name in pending[method]]
                if not rows:
                    continue
                explanation = explain(
                    model, _take(inputs, rows), method=method, layer=args.layer,
                    target=target, size=args.size,
                )  # fmt: skip
                save(
                    explanation, [pictures[i] for i in rows], out,
                    names=[batch[i].name for i in rows],
                    sources=[str(batch[i].path) for i in rows],
                    labels=labels, colormap=args.colormap, alpha=args.alpha,
                )  # fmt: skip
        bar.advance(len(todo[start : start + args.batch_size]))
    if read_results(out):
        page = report(out, title=f"camkit: {args.model}")
        print(f"wrote maps of {len(images) - skipped} images to {out}, report {page}")
    if skipped:
        print(f"camkit: {skipped} files could not be read (listed above)", file=sys.stderr)
    return 0 if skipped < len(images) else 1


def _take(inputs: Any, rows: list[int]) -> Any:
    """The samples ``rows`` of a batch (all of it where every row is wanted)."""
    if len(rows) == len(inputs):
        return inputs
    return inputs[np.asarray(rows)] if isinstance(inputs, np.ndarray) else inputs[rows]


def _size(text: str) -> Any:
    return text if text in ("input", "layer") else tuple(int(s) for s in text.split("x"))


def add_explain_command(commands: Any) -> None:
    """``camkit explain``, on the ``camkit`` parser's subcommands."""
    parser = commands.add_parser(
        "explain", help="explain image files or folders with a model", description=_DESCRIPTION
    )
    parser.add_argument("images", nargs="+", metavar="IMAGES_OR_DIRS")
    parser.add_argument(
        "--model", required=True, metavar="SPEC",
        help="a .keras/.h5 file, a .pt2 (torch.export) or .pt/.pth (pickled torch module) "
        "file, or package.module:factory returning the model or (model, preprocess)",
    )  # fmt: skip
    parser.add_argument(
        "--method", action="append", choices=list(methods()), metavar="METHOD",
        help="a method (repeat for several; default: gradcam); see camkit methods",
    )  # fmt: skip
    parser.add_argument("--layer", help="the layer to explain (default: camkit's choice)")
    parser.add_argument(
        "--target", help="a class index, a class name (with --labels), or topk:K "
        "(default: each image's top-1 class)",
    )  # fmt: skip
    parser.add_argument("--labels", help="a text file of class names, one per line")
    parser.add_argument(
        "--size", type=_size, default="input",
        help="map size: input (the default), layer, or HxW",
    )  # fmt: skip
    parser.add_argument(
        "--colormap", choices=COLORMAPS, default="jet", metavar="NAME",
        help=f"one of {', '.join(COLORMAPS)} (default: jet)",
    )  # fmt: skip
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="the map's weight in the overlay (default: 0.5)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="images per forward pass (default: 16)"
    )
    parser.add_argument("--device", help="torch device for the model and inputs, e.g. cuda")
    parser.add_argument(
        "--out", default="camkit-out", help="output folder, resumable (default: camkit-out)"
    )
    group = parser.add_argument_group("preprocessing (unless the factory gives its own)")
    group.add_argument(
        "--resize", type=int, nargs=2, default=(224, 224), metavar=("H", "W"),
        help="the model's input size (default: 224 224)",
    )  # fmt: skip
    group.add_argument(
        "--range", choices=("0-1", "0-255"), default="0-1",
        help="pixel values before --mean/--std (default: 0-1)",
    )  # fmt: skip
    group.add_argument(
        "--mean", type=float, nargs=3, default=(0.0, 0.0, 0.0), metavar=("R", "G", "B"),
        help="subtracted per channel, in --range units (default: 0 0 0)",
    )  # fmt: skip
    group.add_argument(
        "--std", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("R", "G", "B"),
        help="divided per channel (default: 1 1 1)",
    )  # fmt: skip
    group.add_argument("--bgr", action="store_true", help="give the model BGR (default: RGB)")
    parser.set_defaults(run=run_explain)
