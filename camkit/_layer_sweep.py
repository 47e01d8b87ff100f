"""Which layer to explain: every candidate layer explained and ranked by a faithfulness metric."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _api, _noise
from ._base import Explanation, LayerLike
from ._errors import InputError, LayerError, closest_names
from ._faithfulness import deletion, insertion
from ._layout import LayerTable
from ._road import road
from ._scoring import TargetLike

__all__ = ["LayerSweep", "default_layers", "layer_sweep"]

#: A metric of one layer's maps: ``(model, inputs, explanation, target) -> (N,)`` values.
MetricFunction = Callable[[Any, Any, Explanation, TargetLike], Any]

#: The named metrics, and whether a higher value is better (ROAD's depends on its order).
_METRICS: dict[str, tuple[Callable[..., Any], bool | None]] = {
    "deletion": (deletion, False),
    "insertion": (insertion, True),
    "road": (road, None),
}
#: What the sweep passes to a named metric itself.
_SHARED = {"model", "inputs", "cams", "target", "backend", "image", "forward_kwargs"}


@dataclass(frozen=True)
class LayerSweep:
    """The candidate layers ranked by a metric of their maps, best first.

    ``layers`` ``(L,)`` the layers' names in rank order; ``values`` ``(L, N)`` float64 each
    layer's value per sample (a named metric's ``auc``); ``means`` ``(L,)`` their means, the
    ranking key; ``metric`` the metric's name; ``higher_is_better`` its direction.
    """

    layers: tuple[str, ...]
    values: np.ndarray
    means: np.ndarray
    metric: str
    higher_is_better: bool

    @property
    def best(self) -> str:
        """The layer whose maps scored best."""
        return self.layers[0]

    def __str__(self) -> str:
        width = max(len(name) for name in self.layers)
        direction = "higher" if self.higher_is_better else "lower"
        lines = [f"{'layer':<{width}}  mean {self.metric} ({direction} is better)"]
        lines += [f"{name:<{width}}  {mean:.4f}"
                  for name, mean in zip(self.layers, self.means, strict=True)]  # fmt: skip
        return "\n".join(lines)


def default_layers(table: LayerTable) -> list[str]:
    """The deepest layer of each distinct map size, deepest first: a network's stage outputs
    (a ResNet's ``layer4``, ``layer3``, ``layer2``, ``layer1`` and its stem)."""
    seen: set[tuple[int, ...]] = set()
    chosen = []
    for row in reversed(table.explainable()):
        if row.spatial is not None and row.spatial not in seen:
            seen.add(row.spatial)
            chosen.append(row.name)
    if not chosen:
        raise LayerError(
            "the model has no layer with a spatial output over these inputs; pass layers= "
            "the names of the layers to compare"
        )
    return chosen


def _candidates(value: object) -> list[LayerLike]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise InputError(
            f"layers={value!r} is not valid; use a non-empty list of layer names (or layer "
            "objects), or None for the deepest layer of each map size"
        )
    return list(value)


def _values(given: Any, count: int, metric: str) -> np.ndarray:
    values = np.asarray(getattr(given, "auc", given), dtype=np.float64)
    if values.shape != (count,) or not np.isfinite(values).all():
        raise InputError(
            f"metric {metric!r} returned {values!r}; a metric returns one finite value per "
            f"sample, shape ({count},)"
        )
    return values


def _method_options(method: object) -> frozenset[str]:
    """The options ``method`` takes beside the ones the sweep sets itself."""
    cls = _api.methods().get(method) if isinstance(method, str) else None
    if cls is None:
        known = (closest_names(method, _api.methods()) if isinstance(method, str) else
                 f"use one of {', '.join(map(repr, _api.methods()))}")  # fmt: skip
        raise InputError(f"method={method!r} is not a camkit method; {known}")
    return _api._option_names(cls) - {"backend", "size"}


def _metric(
    metric: object, higher_is_better: object, options: Mapping[str, Any]
) -> tuple[Callable[..., Any], bool, frozenset[str], str]:
    """The metric's function, whether higher is better, its own options and its name."""
    if isinstance(metric, str):
        if metric not in _METRICS:
            raise InputError(
                f"metric={metric!r} is not a metric of the sweep; use one of "
                f"{', '.join(map(repr, _METRICS))} or a callable"
            )
        if higher_is_better is not None:
            raise InputError(
                f"higher_is_better={higher_is_better!r} is for a callable metric; the "
                f"direction of {metric!r} is known: leave higher_is_better=None"
            )
        function, higher = _METRICS[metric]
        parameters = inspect.signature(function).parameters
        if higher is None:  # ROAD: most relevant first is lower-better
            higher = options.get("order", parameters["order"].default) == "least"
        return function, higher, frozenset(parameters) - _SHARED, metric
    if callable(metric):
        if not isinstance(higher_is_better, bool):
            raise InputError(
                f"higher_is_better={higher_is_better!r} is not valid for a callable metric; "
                "pass True where a higher value means a more faithful map, else False"
            )
        return metric, higher_is_better, frozenset(), getattr(metric, "__name__", "metric")
    raise InputError(
        f"metric={metric!r} is not valid; use {', '.join(map(repr, _METRICS))} or a callable "
        "(model, inputs, explanation, target) -> values per sample"
    )


def layer_sweep(
    model: Any,
    inputs: Any,
    layers: Sequence[LayerLike] | None = None,
    method: str = "gradcam",
    metric: str | MetricFunction = "deletion",
    target: TargetLike = None,
    *,
    higher_is_better: bool | None = None,
    backend: str | None = None,
    image: int | str | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> LayerSweep:
    """Explain the batch with each candidate layer and rank the layers by how faithful their
    maps are.

    Each layer ``l`` gives maps ``M_l = explain(model, inputs, method, l, target,
    size="input")`` and values ``v_l = metric(M_l)`` per sample; layers are ranked by the mean
    of ``v_l`` in the metric's direction (ties keep the candidates' order): ``"deletion"``
    (:func:`deletion`'s AUC, lower is better), ``"insertion"`` (higher is better) or
    ``"road"`` (:func:`road`'s AUC, lower is better for ``order="most"``, higher for
    ``"least"``).

    Args:
        model: as for :func:`camkit.explain`.
        inputs: as for :func:`camkit.explain`.
        target: as for :func:`camkit.explain`; the metric scores the same target.
        backend: as for :func:`camkit.explain`.
        image: as for :func:`camkit.explain`.
        forward_kwargs: as for :func:`camkit.explain`.
        layers: the candidates, names or layer objects; ``None``: the deepest layer of each
            distinct map size that :func:`camkit.layers` lists, deepest first (a CNN's stage
            outputs; for a vision transformer, whose blocks share one grid, that is its last
            block only: name the blocks to compare).
        method: the method that makes the maps, as for :func:`camkit.explain`.
        metric: a name above, or a callable ``(model, inputs, explanation, target) -> (N,)``
            values (or a result with ``auc``), with ``higher_is_better`` then given.
        **options: options of the method (passed to :func:`camkit.explain`) and of a named
            metric (``steps``, ``baseline``, ``percentages``, ``order``, ``score``, ...); one
            that both take (``batch_size``, ``precision``, ``progress``) goes to both. ROAD
            without a ``seed`` draws one for the sweep, so every layer meets the same noise.

    >>> sweep = metrics.layer_sweep(model, images, ["layer2", "layer3", "layer4"],
    ...                             metric="deletion", steps=20)  # doctest: +SKIP
    >>> sweep.best, sweep.means                                      # doctest: +SKIP
    ('layer4', array([0.21, 0.34, 0.47]))
    >>> def energy(model, x, explanation, target):  # doctest: +SKIP
    ...     return metrics.energy_pointing_game(explanation, boxes).proportions
    >>> metrics.layer_sweep(model, images, metric=energy, higher_is_better=True)  # doctest: +SKIP
    """
    method_options = _method_options(method)
    function, higher, metric_options, name = _metric(metric, higher_is_better, options)
    unknown = sorted(set(options) - method_options - metric_options)
    if unknown:
        raise InputError(
            f"{unknown[0]!r} is an option of neither method {method!r} nor metric {name!r}; "
            f"{closest_names(unknown[0], sorted(method_options | metric_options))}"
        )
    if layers is None:
        candidates: Sequence[LayerLike] = default_layers(
            _api.layers(model, inputs, backend=backend, image=image, forward_kwargs=forward_kwargs)
        )
    else:
        candidates = _candidates(layers)
    for_method = {k: v for k, v in options.items() if k in method_options}
    for_metric = {k: v for k, v in options.items() if k in metric_options}
    if "seed" in metric_options and for_metric.get("seed") is None:
        for_metric["seed"] = _noise.run_seed(None)  # every layer meets the same noise
    names, rows = [], []
    for layer in candidates:
        explanation = _api.explain(
            model, inputs, method, layer, target, backend, "input", image=image,
            forward_kwargs=forward_kwargs, **for_method,
        )  # fmt: skip
        if isinstance(metric, str):
            given = function(model, inputs, explanation, target, backend=backend, image=image,
                             forward_kwargs=forward_kwargs, **for_metric)  # fmt: skip
        else:
            given = function(model, inputs, explanation, target)
        names.append(explanation.layers[0])
        rows.append(_values(given, len(explanation), name))
    values = np.stack(rows)
    means = values.mean(axis=1)
    ranking = np.argsort(-means if higher else means, kind="stable")
    return LayerSweep(
        layers=tuple(names[i] for i in ranking), values=values[ranking], means=means[ranking],
        metric=name, higher_is_better=higher,
    )  # fmt: skip
