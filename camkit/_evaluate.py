"""``camkit.evaluate``: maps and per-sample metrics over a whole dataset, streamed to disk.

Batch by batch: explain it with each method (the method objects are built once), score each
map with each metric, write the batch's maps and rows (:mod:`camkit._evaluation_store`), drop
it. Memory holds one batch; a run stopped at any point resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from . import _checks
from ._base import LayerLike
from ._batch_evaluation import BatchEvaluator, host_labels, kept_rows
from ._errors import InputError
from ._evaluation import Evaluation, read_evaluation
from ._evaluation_store import MapsDtype, Store, TableFormat, check_maps_dtype, check_table
from ._progress import Progress

__all__ = ["evaluate", "unpack_batch"]


def _items(batches: Iterable[Any]) -> Iterator[Any]:
    """The batches, a ``tf.data.Dataset`` as numpy (its ``as_numpy_iterator``)."""
    numpy_batches = getattr(batches, "as_numpy_iterator", None)
    return iter(numpy_batches() if callable(numpy_batches) else batches)


def unpack_batch(item: Any) -> tuple[Any, Any]:
    """One item of ``batches`` as ``(inputs, labels or None)``: an array, an ``(inputs,
    labels)`` pair (a tuple, or the list a torch ``DataLoader`` yields), or a dict with
    ``"image"`` and, optionally, ``"label"``."""
    if isinstance(item, Mapping) and "image" in item:
        inputs, labels = item["image"], item.get("label")
    elif isinstance(item, list | tuple) and len(item) == 2:
        inputs, labels = item
    else:
        inputs, labels = item, None
    if len(getattr(inputs, "shape", ())) < 2:
        raise InputError(
            f"a batch is {type(item).__qualname__}; each item of batches must be the inputs "
            "(an array (N, ...)), an (inputs, labels) pair, or {'image': inputs, 'label': "
            "labels}"
        )
    return inputs, labels


class _Meter(Progress):
    """``camkit.evaluate: 96 samples, batch 6/20 (2 done before), 3.1 samples/s, ETA 40 s``,
    redrawn in place; the rate and time left count the batches computed, not those skipped."""

    def __init__(self, batches: int | None, enabled: bool | None) -> None:
        terminal = bool(getattr(sys.stderr, "isatty", bool)())
        super().__init__("camkit.evaluate", batches or 0, terminal if enabled is None else enabled)
        self.batches = self.skipped = self.computed_samples = 0

    def advance(self, passes: int, *, skipped: bool = False) -> None:
        self.done += passes
        self.batches += 1
        self.skipped += skipped
        self.computed_samples += 0 if skipped else passes
        if not self.enabled:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        computed = self.batches - self.skipped
        of = f"/{self.total}" if self.total else ""
        left = ""
        if self.total and computed:
            left = f", ETA {(self.total - self.batches) * elapsed / computed:.0f} s"
        self.stream.write(
            f"\r{self.label}: {self.done} samples, batch {self.batches}{of} ({self.skipped} done "
            f"before), {self.computed_samples / elapsed:.1f} samples/s{left}"
        )
        self.stream.flush()


def evaluate(
    model: Any,
    batches: Iterable[Any],
    *,
    out: str | os.PathLike[str],
    methods: Sequence[str] | str = ("gradcam",),
    metrics: Sequence[str] | str = ("deletion", "insertion"),
    target: Any = None,
    layer: LayerLike | Sequence[LayerLike] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    maps: MapsDtype | None = "float16",
    table: TableFormat = "parquet",
    backend: str | None = None,
    progress: bool | None = None,
) -> Evaluation:
    """Explain and score every sample of ``batches``, writing the results to ``out`` as they
    come; run it again after an interruption to compute only what is missing.

    Args:
        model: as for :func:`camkit.explain`; one input (the image) per sample.
        batches: an iterable of batches, read once: a torch ``DataLoader``, a
            ``tf.data.Dataset`` (read through ``as_numpy_iterator``), a list or generator.
            Each item is the inputs ``(N, ...)`` (an array of the model's framework or
            numpy), an ``(inputs, labels)`` pair, or a dict ``{"image": inputs, "label":
            labels}``; labels are one integer class per sample. The samples are numbered in
            the order they come (``sample`` in the table): a rerun must yield the same
            samples in the same order (no shuffling).
        out: the folder of results (see the guide, *Dataset evaluation*, for its layout).
        methods: names of :func:`camkit.methods`.
        metrics: any of ``"deletion"``, ``"insertion"`` (the areas under their curves),
            ``"confidence"`` (average drop and increase in confidence) and ``"road"`` (ROAD's
            mean score), each as in :mod:`camkit.metrics`, per sample.
        target: ``None`` (each sample's top-1 class), a class index, ``"label"`` (each sample's
            label), a :mod:`camkit.targets` object with one score per sample, or a callable;
            the maps explain it and the metrics score it.
        layer: as for :func:`camkit.explain`, for every method.
        options: options per method, ``{"scorecam": {"batch_size": 64}}``, as
            :func:`camkit.explain` takes them (``size`` stays ``"input"``: the metrics need
            maps at the inputs' resolution).
        metric_options: options per metric, ``{"deletion": {"steps": 20}}``, as the
            functions of :mod:`camkit.metrics` take them.
        maps: how maps are stored: ``"float16"`` (about 3 significant digits), ``"float32"``,
            ``"uint8"`` (``round(255 m)``, for maps in ``[0, 1]``), or ``None`` to store none.
            The metrics are computed on the float32 maps.
        table: ``"parquet"`` (needs pyarrow: ``pip install camkit[parquet]``) or ``"csv"``.
        backend: a backend name to override automatic selection.
        progress: a progress line on standard error: samples, batches, rate and time left;
            ``None`` shows it on an interactive terminal.

    Returns:
        the :class:`Evaluation` in ``out`` (its ``batches_skipped`` were done before).
    """
    maps_dtype = check_maps_dtype(maps)
    table_format = check_table(table)
    _checks.optional_flag(progress, "progress")
    try:
        total: int | None = len(batches)  # type: ignore[arg-type]
    except TypeError:
        total = None
    with BatchEvaluator(
        model, methods=methods, metrics=metrics, target=target, layer=layer, options=options,
        metric_options=metric_options, backend=backend,
    ) as evaluator:  # fmt: skip
        store = Store.create(out, {**evaluator.manifest, "maps": maps_dtype, "table": table_format})
        done = store.done_samples()
        meter = _Meter(total, progress)
        first = 0
        try:
            for item in _items(batches):
                inputs, labels = unpack_batch(item)
                count = int(inputs.shape[0])
                samples = np.arange(first, first + count, dtype=np.int64)
                first += count
                rows = np.flatnonzero(~np.isin(samples, done))
                if len(rows):
                    chosen = host_labels(labels, count)
                    result = evaluator(
                        kept_rows(inputs, rows),
                        None if chosen is None else chosen[rows],
                        samples[rows],
                    )
                    store.write(result.key, result.columns, result.maps)
                meter.advance(count, skipped=not len(rows))
        finally:
            meter.close()
    return dataclasses.replace(
        read_evaluation(store.root),
        batches_computed=meter.batches - meter.skipped,
        batches_skipped=meter.skipped,
    )
