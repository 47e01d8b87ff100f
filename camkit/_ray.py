"""``camkit.RayEvaluator``: :func:`camkit.evaluate` as a Ray Data ``map_batches`` callable class.

Ray builds one instance per actor, so the model (from a factory) and the method objects are
built once per actor, which may hold a GPU; each call evaluates one batch of rows with the
same :class:`~camkit._batch_evaluation.BatchEvaluator` as :func:`camkit.evaluate` and writes
the same folder. Nothing here imports Ray: Ray imports this.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ._base import LayerLike
from ._batch_evaluation import BatchEvaluator, host_labels, kept_rows
from ._errors import InputError
from ._evaluation_store import MapsDtype, Store, TableFormat, check_maps_dtype, check_table

__all__ = ["RayEvaluator"]


class RayEvaluator:
    """Evaluate the batches of a ``ray.data.Dataset`` into ``out``, one Ray actor per model:

    >>> results = dataset.map_batches(                               # doctest: +SKIP
    ...     camkit.RayEvaluator,
    ...     fn_constructor_kwargs={"model": "my_models:resnet", "out": "/shared/eval"},
    ...     batch_size=32, compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1,
    ... ).materialize()
    >>> camkit.read_evaluation("/shared/eval").summary()              # doctest: +SKIP

    Args:
        model: what builds the model in each actor: ``"package.module:function"`` (a
            function returning the model, or ``(model, preprocess)``), a Keras or PyTorch
            model file (as ``camkit explain --model`` takes them), or a picklable
            zero-argument callable returning the same. A ``preprocess`` is applied to each
            batch's image column. The factory puts the model on its device (``.to("cuda")``
            in a GPU actor).
        out: the results folder, on storage that every actor sees (a shared filesystem on a
            cluster); the layout of :func:`camkit.evaluate`, read by
            :func:`camkit.read_evaluation`.
        image_column: the column of model inputs ``(B, ...)``.
        label_column: the column of integer labels (used where present; needed for
            ``target="label"``).
        id_column: the column of global sample indices (``ray.data.range`` makes ``"id"``),
            the ``sample`` of the table.

    ``methods``, ``metrics``, ``target``, ``layer``, ``options``, ``metric_options``,
    ``maps``, ``table`` and ``backend`` are as for :func:`camkit.evaluate`.

    A call returns the rows it computed as columns (those of
    :meth:`camkit.Evaluation.table`), and writes the batch's maps and rows; samples whose
    rows ``out`` already holds (from an earlier, interrupted run) are skipped, so a rerun
    computes only the rest.
    """

    def __init__(
        self,
        model: str | Callable[[], Any],
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
        image_column: str = "image",
        label_column: str | None = "label",
        id_column: str = "id",
    ) -> None:
        maps_dtype = check_maps_dtype(maps)
        table_format = check_table(table)
        built, self._preprocess = _build(model)
        self._columns = (image_column, label_column, id_column)
        self._evaluator = BatchEvaluator(
            built, methods=methods, metrics=metrics, target=target, layer=layer,
            options=options, metric_options=metric_options, backend=backend,
        )  # fmt: skip
        manifest = {**self._evaluator.manifest, "maps": maps_dtype, "table": table_format}
        self._store = Store.create(out, manifest)
        self._done = self._store.done_samples()

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Evaluate one batch of columns; return its rows as columns."""
        image_column, label_column, id_column = self._columns
        for column in (image_column, id_column):
            if column not in batch:
                raise InputError(
                    f"the batch has no column {column!r} (it has {sorted(batch)}); name the "
                    "columns with image_column= and id_column= (ray.data.range gives 'id')"
                )
        ids = np.asarray(batch[id_column])
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise InputError(
                f"column {id_column!r} has shape {ids.shape} and dtype {ids.dtype}; it must hold "
                "one integer sample index per row"
            )
        rows = np.flatnonzero(~np.isin(ids, self._done))
        if not len(rows):
            columns = self._evaluator.columns
            return {name: np.zeros(0, dtype) for name, dtype in columns.items()}
        inputs = kept_rows(batch[image_column], rows)
        inputs = inputs if self._preprocess is None else self._preprocess(inputs)
        labels = batch.get(label_column) if label_column is not None else None
        chosen = host_labels(labels, len(ids))
        result = self._evaluator(
            inputs, None if chosen is None else chosen[rows], ids[rows].astype(np.int64)
        )
        self._store.write(result.key, result.columns, result.maps)
        return result.columns

    def __del__(self) -> None:
        evaluator = getattr(self, "_evaluator", None)
        if evaluator is not None:
            evaluator.close()


def _build(model: str | Callable[[], Any]) -> tuple[Any, Callable[[Any], Any] | None]:
    """The model and its preprocessing (or ``None``) from a spec or a factory."""
    from ._cli_explain import load_model  # the command line's loader: files and factories

    if isinstance(model, str):
        return load_model(model, None)
    if not callable(model):
        raise InputError(
            f"model={model!r} is not valid; pass 'package.module:function', a model file, or a "
            "picklable zero-argument callable returning the model (each Ray actor builds one)"
        )
    made = model()
    return made if isinstance(made, tuple) else (made, None)
