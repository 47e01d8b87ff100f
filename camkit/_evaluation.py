"""Reading a dataset evaluation back: :class:`Evaluation` and :func:`read_evaluation`.

The table parts and map chunks of an evaluation folder (:mod:`camkit._evaluation_store`) are
merged on reading: rows ordered by method (as listed in the run) then sample, a sample written
twice (two actors that raced, a retried Ray task) counted once, from the part of lowest key.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._batch_evaluation import ROW_COLUMNS
from ._errors import CamkitError, InputError
from ._evaluation_store import Store

__all__ = ["Evaluation", "read_evaluation"]


def _first_of_each(keys: np.ndarray) -> np.ndarray:
    """The positions of the first occurrence of each key, in increasing order of the keys."""
    _, first = np.unique(keys, return_index=True)
    return first


@dataclass(frozen=True, repr=False)
class Evaluation:
    """An evaluation folder written by :func:`camkit.evaluate` or :class:`camkit.RayEvaluator`.

    ``out`` the folder; ``methods`` and ``metrics`` the names evaluated; ``samples`` how many
    samples have rows; ``batches_computed`` and ``batches_skipped`` what the run that returned
    it computed and found done already (both 0 from :func:`camkit.read_evaluation`). Nothing
    is held in memory: each call reads the files.
    """

    out: Path
    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    samples: int
    _store: Store = field(compare=False)
    batches_computed: int = 0
    batches_skipped: int = 0

    def table(self, *, as_pandas: bool = False) -> Any:
        """Every row: a dict of numpy columns, or a ``pandas.DataFrame`` with ``as_pandas``.

        Columns: ``sample`` (the global index), ``batch`` (the smallest sample index of its
        batch, which names its files), ``method``, ``target`` (the class explained and scored,
        ``-1`` for a callable target), ``score`` (the target's score on the input, as
        :class:`camkit.Explanation` gives it), ``label`` (``-1`` without labels), then per
        metric ``deletion_auc``, ``insertion_auc``, ``average_drop`` and
        ``increase_in_confidence`` (per sample, in percent: their means are the paper's
        numbers), ``road_auc``. One row per sample and method, ordered by method, then sample.
        """
        parts = [self._store.read_part(path) for _, path in self._store.parts()]
        columns = {
            name: np.concatenate([np.zeros(0, dtype), *(p[name] for p in parts)])
            for name, dtype in self._store.columns.items()
        }
        order = {name: i for i, name in enumerate(self.methods)}
        method_index = np.asarray([order[m] for m in columns["method"].tolist()], np.int64)
        keys = method_index * (int(columns["sample"].max(initial=0)) + 1) + columns["sample"]
        rows = _first_of_each(keys)
        merged = {name: values[rows] for name, values in columns.items()}
        if not as_pandas:
            return merged
        try:
            import pandas
        except ImportError as error:
            raise CamkitError(
                "table(as_pandas=True) needs pandas: pip install pandas, or call table() for "
                "numpy columns"
            ) from error
        return pandas.DataFrame(merged)

    def chunks(self, method: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(samples, maps)`` per stored batch, in the order of the parts: the global indices
        ``(B,)`` and their maps ``(B, *S)`` as stored (memory-mapped, read on access): for
        going through a large run's maps in bounded memory."""
        self._check_method(method)
        for key, path in self._store.parts():
            rows = self._store.read_part(path, ("sample", "method"))
            samples = rows["sample"][rows["method"] == method]
            stored = np.load(self._store.map_path(method, key), mmap_mode="r")
            if len(stored) != len(samples):
                raise CamkitError(
                    f"{self._store.map_path(method, key)} holds {len(stored)} maps for "
                    f"{len(samples)} rows of {path.name}; the folder was changed by hand: "
                    "delete both files and run the evaluation again to redo that batch"
                )
            yield samples, stored

    def maps(self, method: str) -> np.ndarray:
        """The maps of ``method`` for every sample, ``(N, *S)`` in the order of ``sample`` (as
        stored: float16, float32, or uint8 holding ``round(255 m)``), read into memory; see
        :meth:`chunks` for a run too large for that."""
        found = list(self.chunks(method))
        if not found:
            return np.zeros((0,), self._store.manifest["maps"])
        samples = np.concatenate([s for s, _ in found])
        maps = np.concatenate([m for _, m in found])
        return maps[_first_of_each(samples)]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per method, the mean of each metric column over the samples (``average_drop``
        and ``increase_in_confidence`` in percent, as the paper reports them)."""
        table = self.table()
        metric_columns = [c for c in self._store.columns if c not in ROW_COLUMNS]
        return {
            method: {
                column: float(np.mean(table[column][table["method"] == method]))
                for column in metric_columns
            }
            for method in self.methods
        }

    def _check_method(self, method: str) -> None:
        if self._store.manifest["maps"] is None:
            raise InputError(
                f"{str(self.out)!r} stores no maps (it ran with maps=None); run it again with "
                "maps='float16' into another folder to keep them"
            )
        if method not in self.methods:
            raise InputError(f"method={method!r} was not evaluated; use one of {self.methods}")

    def __repr__(self) -> str:
        return (
            f"Evaluation(out={str(self.out)!r}, methods={self.methods!r}, "
            f"metrics={self.metrics!r}, samples={self.samples}, "
            f"batches_computed={self.batches_computed}, batches_skipped={self.batches_skipped})"
        )


def read_evaluation(out: str | os.PathLike[str]) -> Evaluation:
    """The evaluation in ``out``, finished or stopped part-way (its finished batches)."""
    store = Store.open(out)
    return Evaluation(
        out=store.root,
        methods=tuple(store.manifest["methods"]),
        metrics=tuple(store.manifest["metrics"]),
        samples=len(store.done_samples()),
        _store=store,
    )
