"""One batch of a dataset evaluation: its maps by every method, and each sample's metrics.

:class:`BatchEvaluator` is built once per model (its method objects too) and called per
batch, by :func:`camkit.evaluate` in one process and by :class:`camkit.RayEvaluator` in each
Ray actor: the same rows and maps whichever runs it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._api import _option_names
from ._api import methods as method_table
from ._base import CamMethod, LayerLike
from ._errors import InputError, closest_names
from ._evaluation_store import describe
from ._faithfulness import confidence_change, deletion, insertion
from ._namespace import take_rows
from ._output import unit_maps
from ._road import road
from ._targets import _host_values

__all__ = [
    "METRICS",
    "ROW_COLUMNS",
    "BatchEvaluator",
    "BatchResult",
    "host_labels",
    "kept_rows",
]


@dataclass(frozen=True)
class Metric:
    """A per-sample metric: the function of :mod:`camkit.metrics` that computes it, and its
    table columns, each read from the function's result."""

    function: Callable[..., Any]
    columns: Mapping[str, Callable[[Any], np.ndarray]]


#: The metrics by name. ``average_drop`` is ``100 max(0, Y - O) / Y`` and
#: ``increase_in_confidence`` ``100 [O > Y]`` per sample, so that their means over any samples
#: are the paper's percentages (:func:`camkit.metrics.confidence_change`); ``road_auc`` is
#: :attr:`camkit.metrics.RoadCurves.auc`.
METRICS: dict[str, Metric] = {
    "deletion": Metric(deletion, {"deletion_auc": lambda c: c.auc}),
    "insertion": Metric(insertion, {"insertion_auc": lambda c: c.auc}),
    "confidence": Metric(
        confidence_change,
        {
            "average_drop": lambda c: 100 * c.drop,
            "increase_in_confidence": lambda c: 100 * c.increased.astype(np.float64),
        },
    ),
    "road": Metric(road, {"road_auc": lambda c: c.auc}),
}
#: The table's columns before the metrics', and their dtypes.
ROW_COLUMNS = {
    "sample": "int64", "batch": "int64", "method": "str", "target": "int64",
    "score": "float32", "label": "int64",
}  # fmt: skip
#: Arguments that evaluate sets itself, for every method or metric alike.
_SHARED = frozenset({"backend", "size", "image", "forward_kwargs"})


@functools.cache
def _metric_option_names(function: Callable[..., Any]) -> frozenset[str]:
    parameters = inspect.signature(function).parameters.values()
    return frozenset(p.name for p in parameters if p.kind is p.KEYWORD_ONLY) - _SHARED


def _names(given: Sequence[str] | str, argument: str, known: Sequence[str]) -> tuple[str, ...]:
    if not isinstance(given, str | list | tuple):
        raise InputError(f"{argument}={given!r} is not valid; pass a name or a tuple of names")
    names = (given,) if isinstance(given, str) else tuple(given)
    for name in names:
        if name not in known:
            raise InputError(f"{argument} has {name!r}; {closest_names(str(name), known)}")
    if len(set(names)) != len(names):
        raise InputError(f"{argument}={names!r} names one twice; list each once")
    return names


def _per_name(
    given: Mapping[str, Mapping[str, Any]] | None, argument: str, names: tuple[str, ...],
    valid: Callable[[str], frozenset[str]],
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """``options=`` or ``metric_options=``: a dict of options per method or metric name."""
    if given is not None and not isinstance(given, Mapping):
        raise InputError(
            f"{argument}={given!r} is not valid; pass a dict of options per name, "
            f"{argument}={{{(names or ('name',))[0]!r}: {{...}}}}"
        )
    chosen = dict(given or {})
    for name, options in chosen.items():
        if name not in names or not isinstance(options, Mapping):
            listed = ", ".join(map(repr, names)) or "none"
            raise InputError(
                f"{argument} has {name!r}: {options!r}, not the options of one of those "
                f"evaluated ({listed}); give each one's options under its name, as "
                f"{argument}={{{(names or (name,))[0]!r}: {{...}}}}"
            )
        for option in options:
            if option not in valid(name):
                raise InputError(
                    f"{argument}[{name!r}] has {option!r}, which {name!r} does not take; "
                    f"{closest_names(str(option), sorted(valid(name)))}"
                )
    return {name: dict(chosen.get(name, {})) for name in names}


def _without_progress(options: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``options`` less ``progress``, which changes no result (for the manifest)."""
    return {name: {k: v for k, v in o.items() if k != "progress"} for name, o in options.items()}


def _check_target(target: Any) -> None:
    if isinstance(target, str) and target != "label":
        raise InputError(
            f"target={target!r} is not valid; pass 'label' (each sample's label), None (its "
            "top-1 class), a class index, a camkit.targets object or a callable"
        )
    if isinstance(target, list | tuple) or len(getattr(target, "shape", ())) > 0:
        raise InputError(
            f"target={target!r} gives one class per sample of one batch; over a dataset pass "
            "'label' (each sample's label), None, a class index, a camkit.targets object or "
            "a callable"
        )


def host_labels(labels: Any, count: int) -> np.ndarray | None:
    """A batch's labels (an array of any framework) as int64 ``(count,)``, or ``None``."""
    if labels is None:
        return None
    values = np.asarray(_host_values(labels))
    if values.shape != (count,) or not np.issubdtype(values.dtype, np.integer):
        raise InputError(
            f"labels of shape {values.shape} and dtype {values.dtype} are not one class index "
            f"per sample of a batch of {count}; give integer labels (N,), or batches of inputs "
            "alone (for example (x for x, _ in loader))"
        )
    return values.astype(np.int64)


def kept_rows(inputs: Any, rows: np.ndarray) -> Any:
    """The samples ``rows`` of a batch of any framework (all of it when every row is kept)."""
    if len(rows) == int(inputs.shape[0]):
        return inputs
    return take_rows(inputs, rows)


@dataclass(frozen=True)
class BatchResult:
    """One batch's rows, ``columns`` (one array per column, a row per sample and method,
    method by method), and ``maps``, float32 ``(B, *S)`` per method; ``key`` the smallest
    sample index, which names its files."""

    key: int
    columns: dict[str, np.ndarray]
    maps: dict[str, np.ndarray]


class BatchEvaluator:
    """Explains batches with each method and scores each map with each metric.

    Arguments as for :func:`camkit.evaluate`; the method objects are built here, once, and
    released by :meth:`close`.
    """

    def __init__(
        self, model: Any, *, methods: Sequence[str] | str, metrics: Sequence[str] | str,
        target: Any, layer: LayerLike | Sequence[LayerLike] | None,
        options: Mapping[str, Mapping[str, Any]] | None,
        metric_options: Mapping[str, Mapping[str, Any]] | None, backend: str | None,
    ) -> None:  # fmt: skip
        table = method_table()
        self.method_names = _names(methods, "methods", list(table))
        if not self.method_names:
            raise InputError("methods=() names no method; pass at least one, e.g. ('gradcam',)")
        self.metric_names = _names(metrics, "metrics", list(METRICS))
        _check_target(target)
        self.model, self.target, self.backend = model, target, backend
        method_options = _per_name(
            options, "options", self.method_names, lambda n: _option_names(table[n]) - _SHARED
        )
        self.metric_options = _per_name(
            metric_options, "metric_options", self.metric_names,
            lambda n: _metric_option_names(METRICS[n].function),
        )  # fmt: skip
        self._options = describe({
            "options": _without_progress(method_options),
            "metric": _without_progress(self.metric_options),
        })  # fmt: skip
        for name, function in ((n, METRICS[n].function) for n in self.metric_names):
            if "progress" in _metric_option_names(function):  # the run shows its own progress
                self.metric_options[name].setdefault("progress", False)
        self.methods: dict[str, CamMethod] = {}
        try:
            for name in self.method_names:
                chosen = method_options[name]
                if "progress" in _option_names(table[name]):
                    chosen.setdefault("progress", False)
                self.methods[name] = table[name](model, layer, backend=backend, **chosen)
        except BaseException:
            self.close()
            raise

    @property
    def columns(self) -> dict[str, str]:
        """The table's columns and their dtypes."""
        metric_columns = [c for n in self.metric_names for c in METRICS[n].columns]
        return {**ROW_COLUMNS, **dict.fromkeys(metric_columns, "float64")}

    @property
    def manifest(self) -> dict[str, Any]:
        """What the results depend on, as JSON (compared when a run resumes)."""
        kind = type(self.model)
        return {
            "model": f"{kind.__module__}.{kind.__qualname__}",
            "backend": next(iter(self.methods.values())).backend,
            "methods": list(self.method_names),
            "metrics": list(self.metric_names),
            "target": describe(self.target),
            "layers": {name: describe(m.layers) for name, m in self.methods.items()},
            "options": self._options["options"],
            "metric_options": self._options["metric"],
            "columns": self.columns,
        }

    def __call__(self, inputs: Any, labels: np.ndarray | None, samples: np.ndarray) -> BatchResult:
        """Evaluate one batch: ``inputs`` ``(B, ...)`` as the model takes them, ``labels``
        int64 ``(B,)`` or ``None``, ``samples`` the samples' global indices ``(B,)``."""
        if self.target == "label" and labels is None:
            raise InputError(
                "target='label' needs labels: give batches as (inputs, labels), "
                "{'image': inputs, 'label': labels}, or a Ray column of labels"
            )
        target = labels.tolist() if self.target == "label" and labels is not None else self.target
        count = len(samples)
        rows: list[dict[str, np.ndarray]] = []
        maps = {}
        for name, method in self.methods.items():
            explanation = method(inputs, target).numpy()  # on_device=True results too
            if explanation.scores.ndim != 1:
                raise InputError(
                    f"target={self.target!r} gives {explanation.scores.shape[1]} maps per "
                    "sample; evaluate scores one map per sample: pass None, a class index, "
                    "'label', or a target with one score per sample"
                )
            maps[name] = unit_maps(explanation.cams)  # dtype="uint8" maps as m / 255
            row = {
                "sample": samples.astype(np.int64),
                "batch": np.full(count, samples.min(), np.int64),
                "method": np.full(count, name),
                "target": explanation.targets,
                "score": explanation.scores,
                "label": np.full(count, -1, np.int64) if labels is None else labels,
            }
            for metric_name in self.metric_names:
                metric = METRICS[metric_name]
                result = metric.function(
                    self.model, inputs, explanation, target, backend=self.backend,
                    **self.metric_options[metric_name],
                )  # fmt: skip
                row.update({column: read(result) for column, read in metric.columns.items()})
            rows.append(row)
        columns = {
            name: np.concatenate([row[name] for row in rows]).astype(dtype)
            for name, dtype in self.columns.items()
        }
        return BatchResult(int(samples.min()), columns, maps)

    def close(self) -> None:
        """Release the method objects."""
        for method in self.methods.values():
            method.close()

    def __enter__(self) -> BatchEvaluator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
