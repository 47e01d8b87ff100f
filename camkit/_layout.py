"""Layer layouts: how a layer's output is laid out, the table of a model's layers, and the turn
of any layout into the channels-first map ``(N, C, *S)`` the methods work on.

A backend reports, for every layer a forward pass runs, its output shape and the layout it can
infer from the framework (a module type, a Keras ``data_format``, a channels-last framework, a
token output); where a wrong guess is possible it reports ``None`` and the user says which with
``layout=``. The turn to channels-first happens here, once, for every backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from array_api_compat import array_namespace

from . import _ops
from ._errors import InputError, LayerError

__all__ = [
    "LAYOUTS",
    "LayerInfo",
    "LayerTable",
    "Layout",
    "LayoutLike",
    "check_layout",
    "layer_layout",
    "spatial_shape",
    "to_channels_first",
]

Array = Any
#: How a layer's output is laid out: ``(N, C, *S)``, ``(N, *S, C)`` or tokens ``(N, T, C)``.
Layout = Literal["channels_first", "channels_last", "tokens"]
#: A layout, or a function in the model's framework that turns the layer's output into
#: ``(N, C, *S)`` (a rearrangement: it is applied to the activations and gradients alike).
LayoutLike = Layout | Callable[[Any], Any]
LAYOUTS: tuple[str, ...] = get_args(Layout)


def check_layout(layout: object) -> LayoutLike | None:
    """``layout`` if it is ``None``, a :data:`Layout` or a callable; else an ``InputError``."""
    if layout is None or callable(layout) or layout in LAYOUTS:
        return layout  # type: ignore[return-value]
    raise InputError(
        f"layout={layout!r} is not valid; use one of {', '.join(map(repr, LAYOUTS))}, a function "
        "that turns the layer's output into (N, C, *spatial), or None to infer it"
    )


def spatial_shape(
    shape: Sequence[int], layout: Layout, input_size: Sequence[int]
) -> tuple[int, ...] | None:
    """The spatial shape of a layer's output of ``shape`` in ``layout``, for inputs of spatial
    ``input_size``; ``None`` where it has none that maps onto the inputs: as many axes as the
    inputs and, for images, one stride along both (within 20%: a padded convolution; video's
    time axis may have a stride of its own)."""
    if layout == "channels_first":
        spatial = tuple(shape[2:])
    elif layout == "channels_last":
        spatial = tuple(shape[1:-1])
    else:  # tokens
        if len(shape) != 3:
            return None
        try:
            spatial = _ops.token_grid(int(shape[1]), input_size)[1]
        except InputError:
            return None
    if len(spatial) != len(input_size) or math.prod(spatial) < 2:
        return None
    strides = [size / cells for size, cells in zip(input_size, spatial, strict=True)]
    if len(spatial) == 2 and max(strides) > _ops.STRIDE_TOLERANCE * min(strides):
        return None  # not a map of an image: (tokens, heads) of an attention's projection, say
    return spatial


@dataclass(frozen=True)
class LayerInfo:
    """One layer of a model: its ``name``, its output's ``shape`` as the layer returns it (the
    first array of a tuple output), and its ``layout`` (``None``: camkit cannot tell; pass
    ``layout=``). ``spatial`` is the output's spatial shape over the inputs, or ``None`` for a
    layer that cannot be explained (a vector, a layout unknown)."""

    name: str
    shape: tuple[int, ...]
    layout: Layout | None
    spatial: tuple[int, ...] | None

    @property
    def explainable(self) -> bool:
        return self.spatial is not None


@dataclass(frozen=True)
class LayerTable:
    """Every layer a forward pass runs, in the order their outputs appear (a layer called
    several times: its last call), for inputs of spatial size ``input_size``."""

    rows: tuple[LayerInfo, ...]
    input_size: tuple[int, ...]
    #: The automatic layer, chosen once per table (what ``layer=None`` explains).
    chosen: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(
        cls, calls: Sequence[tuple[str, tuple[int, ...], Layout | None]], input_size: Sequence[int]
    ) -> LayerTable:
        """The table of ``(name, output shape, layout)`` calls; later calls of a name win."""
        last = {name: (name, shape, layout) for name, shape, layout in calls}
        order = [name for name, _, _ in calls]
        unique = [
            last[name] for position, name in enumerate(order) if name not in order[position + 1 :]
        ]
        size = tuple(int(s) for s in input_size)
        rows = tuple(
            LayerInfo(name, tuple(shape), layout,
                      None if layout is None else spatial_shape(shape, layout, size))
            for name, shape, layout in unique
        )  # fmt: skip
        return cls(rows, size)

    def __getitem__(self, name: str) -> LayerInfo:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(row.name == name for row in self.rows)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def explainable(self) -> list[LayerInfo]:
        """The layers with a spatial output over the inputs, in order."""
        return [row for row in self.rows if row.explainable]

    def describe(self, rows: Sequence[LayerInfo] | None = None, limit: int = 8) -> str:
        """The last ``limit`` of ``rows`` (the explainable layers by default) as text."""
        shown = list(self.explainable() if rows is None else rows)[-limit:]
        return "; ".join(f"{r.name!r} {r.shape} {r.layout or 'layout unknown'}" for r in shown)

    def __str__(self) -> str:
        width = max([len(r.name) for r in self.rows] + [5])
        lines = [f"{'layer':<{width}}  {'output shape':<22}  {'layout':<15}  map"]
        for r in self.rows:
            spatial = "x".join(map(str, r.spatial)) if r.spatial else "-"
            lines.append(
                f"{r.name:<{width}}  {r.shape!s:<22}  {r.layout or 'unknown':<15}  {spatial}"
            )
        return "\n".join(lines)


def to_channels_first(
    x: Array,
    layout: LayoutLike,
    input_size: Sequence[int],
    grid: Sequence[int] | None = None,
    prefix_tokens: int | None = None,
) -> Array:
    """A layer's output in ``layout`` as ``(N, C, *S)``, in its own namespace."""
    if callable(layout):
        xp = array_namespace(x)
        return xp.asarray(layout(x))
    if layout == "channels_first":
        return x
    if layout == "channels_last":
        xp = array_namespace(x)
        return xp.permute_dims(x, (0, x.ndim - 1, *range(1, x.ndim - 1)))
    return _ops.tokens_to_grid(x, input_size, grid, prefix_tokens)


def layer_layout(info: LayerInfo, chosen: LayoutLike | None, table: LayerTable) -> LayoutLike:
    """The layout to read ``info``'s output with: the user's ``chosen`` one, else the inferred
    one; a :class:`~camkit.LayerError` where neither says, or where the layer has no map."""
    if chosen is not None:
        return chosen
    if info.layout is not None and info.spatial is not None:
        return info.layout
    if info.layout is None and len(info.shape) >= 3:
        raise LayerError(
            f"layer {info.name!r} outputs shape {info.shape}, and camkit cannot tell whether "
            "it is channels-first or channels-last (this model has layers of both); pass "
            "layout='channels_first' or layout='channels_last' (or a function turning the "
            "output into (N, C, *spatial))"
        )
    raise LayerError(
        f"layer {info.name!r} outputs shape {info.shape}, which has no spatial axes over inputs "
        f"of size {table.input_size}; explainable layers include: {table.describe()}"
    )
