"""The folder a dataset evaluation writes (:func:`camkit.evaluate`, :class:`camkit.RayEvaluator`).

Layout of ``out``:

- ``manifest.json``: what the evaluation runs (model type, backend, methods, metrics, their
  options, target, layers, map dtype, table format, the table's columns and their dtypes)
  and the camkit version that wrote it; a run into a folder whose manifest differs is refused;
- ``table/part-{key:012d}.parquet`` (or ``.csv``): the rows of one batch, one per sample and
  method, ``key`` the smallest global sample index in it;
- ``maps/{method}/{key:012d}.npy``: that batch's maps of ``method``, ``(B, *S)``, in the order
  of the part's rows of that method (the chunked map store; absent with ``maps=None``).

Every file is written to a temporary name and renamed into place (``os.replace``, atomic on one
filesystem), maps first and the table part last: a part's presence marks its samples done, so
a run stopped at any point leaves only whole batches, and a rerun computes the others. Writers
on several machines (Ray actors) need one filesystem they all see.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from . import _checks
from ._errors import CamkitError, InputError

__all__ = ["MapsDtype", "Store", "TableFormat", "check_maps_dtype", "check_table", "describe"]

MANIFEST = "manifest.json"
#: The layout's version: a folder of another version is not resumed.
FORMAT = 1
MapsDtype = Literal["float16", "float32", "uint8"]
TableFormat = Literal["parquet", "csv"]
_PART = re.compile(r"part-(\d{12})\.(parquet|csv)")
_TEMPORARY = re.compile(r"\..*\.tmp")


def check_maps_dtype(maps: MapsDtype | None) -> MapsDtype | None:
    """``maps=``: how maps are stored, or ``None`` for no maps."""
    return None if maps is None else _checks.one_of(maps, "maps", (*get_args(MapsDtype), None))


def check_table(table: TableFormat) -> TableFormat:
    """``table=``, with pyarrow importable for Parquet."""
    chosen: TableFormat = _checks.one_of(table, "table", get_args(TableFormat))
    if chosen == "parquet":
        _pyarrow()
    return chosen


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as error:
        raise CamkitError(
            "table='parquet' needs pyarrow, which is not installed: pip install "
            "'camkit[parquet]', or pass table='csv'"
        ) from error
    return pyarrow


def describe(value: Any) -> Any:
    """``value`` as JSON for the manifest, equal for equal configurations: arrays by shape,
    dtype and a SHA-256 of their bytes, functions and classes by qualified name, other objects
    by ``repr``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [describe(v) for v in value]
    if isinstance(value, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        return {"array": list(value.shape), "dtype": str(value.dtype), "sha256": digest}
    if isinstance(value, type) or callable(value):
        name = getattr(value, "__qualname__", type(value).__qualname__)
        return f"{getattr(value, '__module__', '?')}.{name}"
    return repr(value)


def encode_maps(maps: np.ndarray, dtype: MapsDtype) -> np.ndarray:
    """Float32 maps as stored: ``float32`` as they are, ``float16`` (about 3 significant
    digits), or ``uint8`` ``round(255 m)`` for maps in ``[0, 1]``; values a dtype cannot hold
    raise rather than being stored wrong."""
    finite = maps[np.isfinite(maps)]
    if dtype == "uint8":
        if finite.size != maps.size or (finite.size and (finite.min() < 0 or finite.max() > 1)):
            raise InputError(
                "maps='uint8' stores maps in [0, 1], but these hold values outside it (or NaN); "
                "pass maps='float16' or 'float32', or keep the methods' normalize='minmax'"
            )
        return np.round(maps * 255).astype(np.uint8)
    if dtype == "float16" and finite.size and np.abs(finite).max() > np.finfo(np.float16).max:
        raise InputError(
            f"maps='float16' holds values up to {float(np.finfo(np.float16).max):g}, but these "
            f"reach {float(np.abs(finite).max()):g}; pass maps='float32'"
        )
    return maps.astype(dtype)


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a temporary file beside it, renamed into place once complete."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@dataclass(frozen=True)
class Store:
    """An evaluation folder: its ``root`` and ``manifest``."""

    root: Path
    manifest: Mapping[str, Any]

    @classmethod
    def create(cls, out: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Store:
        """The folder ``out`` for a run of ``manifest`` (as JSON): created, or resumed if it
        holds the same evaluation; one with another manifest raises naming the difference."""
        root = Path(out)
        if root.exists() and not root.is_dir():
            raise InputError(f"out={str(out)!r} is a file; pass a folder (created if missing)")
        from . import __version__  # the package, complete by the time a run starts

        wanted = {"format": FORMAT, "camkit": __version__, **json.loads(json.dumps(manifest))}
        if (root / MANIFEST).exists():
            found = cls.open(root).manifest
            # the camkit version is recorded, not compared: an upgrade may resume a run
            keys = [*wanted, *(k for k in found if k not in wanted)]
            for key in keys:
                if key != "camkit" and found.get(key) != wanted.get(key):
                    raise InputError(
                        f"out={str(out)!r} holds an evaluation with {key}={found.get(key)!r}, "
                        f"not {wanted.get(key)!r}; pass the same arguments to resume it, or "
                        "another out= (or delete that folder) to start a new one"
                    )
            return cls(root, found)
        if root.exists() and any(not _TEMPORARY.fullmatch(p.name) for p in root.iterdir()):
            raise InputError(
                f"out={str(out)!r} is a folder of other files, not a camkit evaluation (it has "
                f"no {MANIFEST}); pass a new or empty folder"
            )
        root.mkdir(parents=True, exist_ok=True)
        text = json.dumps(wanted, indent=2)
        _replace_atomically(root / MANIFEST, lambda path: path.write_text(text, "utf-8"))
        return cls(root, wanted)

    @classmethod
    def open(cls, out: str | os.PathLike[str]) -> Store:
        """The evaluation in ``out``, finished or not."""
        root = Path(out)
        try:
            manifest = json.loads((root / MANIFEST).read_text("utf-8"))
        except FileNotFoundError:
            raise InputError(
                f"out={str(out)!r} holds no camkit evaluation (no {MANIFEST}); pass the folder "
                "that camkit.evaluate or camkit.RayEvaluator wrote"
            ) from None
        if manifest.get("format") != FORMAT:
            raise InputError(
                f"out={str(out)!r} was written in layout {manifest.get('format')!r}; this camkit "
                f"reads layout {FORMAT}: rerun the evaluation into a new folder"
            )
        return cls(root, manifest)

    @property
    def columns(self) -> dict[str, str]:
        """The table's columns and their numpy dtypes (``"str"`` for text)."""
        return dict(self.manifest["columns"])

    def parts(self) -> list[tuple[int, Path]]:
        """The table parts, ``(key, path)`` in the order of their keys."""
        folder = self.root / "table"
        found = [_PART.fullmatch(p.name) for p in folder.iterdir()] if folder.is_dir() else []
        return sorted((int(m[1]), folder / m[0]) for m in found if m and m[2] == self._suffix)

    @property
    def _suffix(self) -> str:
        return str(self.manifest["table"])

    def map_path(self, method: str, key: int) -> Path:
        return self.root / "maps" / method / f"{key:012d}.npy"

    def read_part(self, path: Path, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """The columns ``names`` (all by default) of one part, as numpy arrays."""
        types = self.columns
        wanted = tuple(types) if names is None else names
        if self._suffix == "parquet":
            table = _pyarrow().parquet.read_table(path, columns=list(wanted))
            raw = {name: table.column(name).to_numpy() for name in wanted}
        else:
            with path.open(newline="", encoding="utf-8") as file:
                rows = list(csv.reader(file))
            header = rows[0]
            raw = {name: [row[header.index(name)] for row in rows[1:]] for name in wanted}
        return {name: np.asarray(raw[name], dtype=types[name]) for name in wanted}

    def done_samples(self) -> np.ndarray:
        """The global indices of the samples whose rows are written, sorted."""
        found = [self.read_part(path, ("sample",))["sample"] for _, path in self.parts()]
        return np.unique(np.concatenate([np.zeros(0, np.int64), *found]))

    def write(self, key: int, columns: Mapping[str, np.ndarray], maps: Mapping[str, Any]) -> None:
        """Write one batch: its maps (float32, per method), then its table part."""
        dtype = self.manifest["maps"]
        if dtype is not None:
            for method, values in maps.items():
                path = self.map_path(method, key)
                path.parent.mkdir(parents=True, exist_ok=True)
                stored = encode_maps(values, dtype)
                _replace_atomically(path, functools.partial(_save_npy, array=stored))
        path = self.root / "table" / f"part-{key:012d}.{self._suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        ordered = {name: columns[name] for name in self.columns}
        writer = _write_parquet if self._suffix == "parquet" else _write_csv
        _replace_atomically(path, lambda p: writer(p, ordered))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as file:  # a file object: np.save adds no suffix
        np.save(file, array)


def _write_parquet(path: Path, columns: Mapping[str, np.ndarray]) -> None:
    pyarrow = _pyarrow()
    table = pyarrow.table({name: pyarrow.array(values) for name, values in columns.items()})
    pyarrow.parquet.write_table(table, path)


def _write_csv(path: Path, columns: Mapping[str, np.ndarray]) -> None:
    # repr of a Python float reads back as the same float64, so CSV round-trips exactly
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(list(columns))
        writer.writerows(zip(*(values.tolist() for values in columns.values()), strict=True))
