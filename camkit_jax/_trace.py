"""The capture, written to be traced: forward, zero-perturbation gradients and scores.

The chosen layer's output ``A`` is intercepted and replaced by ``A + delta`` with ``delta = 0``;
the vector-Jacobian product with respect to ``delta`` is then exactly ``dS/dA``. ``K`` scores
per sample ``(N, K)`` take ``K`` products from the one forward: the VJP function ``vmap``-ped
over the rows of the identity as cotangents. An ``eval_shape``
probe first gives each layer's output shape and call count: a layer called several times is
captured at its last call. Per-sample kinds (Equinox) are vmapped over the batch: over every
input whose leading axis is the batch size, the others passed whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from camkit.provider import LayerError, Target, score_outputs

from ._kinds import Layout, Run

__all__ = [
    "Call",
    "Captured",
    "Forward",
    "Probe",
    "capture",
    "forward",
    "probe",
    "replaced",
    "to_core",
    "vmapped",
]


@dataclass(frozen=True)
class Call:
    """The model's arguments inside a trace, ``model(*args, **kwargs)``, and where the image is
    among them (``key``: a position in ``args``, a keyword, or ``None`` for ``args[0]``)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    key: int | str | None

    @property
    def image(self) -> Any:
        if isinstance(self.key, str):
            return self.kwargs[self.key]
        return self.args[self.key or 0]

    def with_image(self, image: Any) -> Call:
        if isinstance(self.key, str):
            return replace(self, kwargs={**self.kwargs, self.key: image})
        args = list(self.args)
        args[self.key or 0] = image
        return replace(self, args=tuple(args))

    def batched(self) -> tuple[list[Any], list[bool], Any]:
        """The arguments' leaves, which of them have the batch size as leading axis, and the
        tree to rebuild them."""
        count = self.image.shape[0]
        leaves, tree = jax.tree_util.tree_flatten((self.args, self.kwargs))
        flags = [getattr(leaf, "ndim", 0) > 0 and leaf.shape[0] == count for leaf in leaves]
        return leaves, flags, tree

    def rebuilt(self, leaves: list[Any], tree: Any) -> Call:
        args, kwargs = jax.tree_util.tree_unflatten(tree, leaves)
        return Call(tuple(args), dict(kwargs), self.key)

    def first(self) -> Call:
        """The first sample alone, without its batch axis (for a per-sample model)."""
        leaves, flags, tree = self.batched()
        firsts = [leaf[0] if f else leaf for leaf, f in zip(leaves, flags, strict=True)]
        return self.rebuilt(firsts, tree)


class Forward(NamedTuple):
    """One forward pass: the outputs, each layer's recorded output, each layer's call count."""

    outputs: Any
    recorded: dict[str, Any]
    calls: Counter[str]


class Probe(NamedTuple):
    """The layers' output shapes (``jax.ShapeDtypeStruct``) and call counts, from no compute."""

    shapes: dict[str, Any]
    calls: dict[str, int]


class Captured(NamedTuple):
    """What a compiled capture returns: activations and gradients channels-first."""

    activations: tuple[Any, ...]
    gradients: tuple[Any, ...] | None
    outputs: Any
    scores: Any
    indices: Any


class _Perturbation:
    """An intercept that records each layer's output and adds ``deltas[layer]`` to it.

    With ``last_calls`` it acts on each layer's last call only (a shared layer is captured
    where it is called last); without, it records every call (the last one wins) and counts
    them in ``seen``. With ``replace`` the layer's output is replaced by ``deltas[layer]``.
    """

    def __init__(
        self, deltas: dict[str, Any] | None, last_calls: dict[str, int] | None,
        replace: bool = False,
    ) -> None:  # fmt: skip
        self.deltas = deltas
        self.last_calls = last_calls
        self.replace = replace
        self.seen: Counter[str] = Counter()
        self.recorded: dict[str, Any] = {}

    def __call__(self, path: str, output: Any) -> Any:
        if not isinstance(output, jax.Array):
            raise LayerError(
                f"layer {path!r} returns {type(output).__name__}, not an array; choose a "
                "layer with a single array output"
            )
        self.seen[path] += 1
        if self.last_calls is None or self.seen[path] == self.last_calls[path]:
            self.recorded[path] = output
            if self.deltas is not None:
                delta = self.deltas[path]
                output = delta.astype(output.dtype) if self.replace else output + delta
        return output


def _run(run: Run, params: Any, call: Call, intercept: Any, paths: frozenset[str] | None) -> Any:
    return run(params, call.args, call.kwargs, intercept, paths)


def vmapped(layout: Layout, call: Call, one: Any, *extra: Any) -> Any:
    """``one(sample_call, *extra_rows)`` over the batch: vmapped for per-sample kinds (over the
    inputs with the batch as leading axis), called once for batched ones."""
    if not layout.per_sample:
        return one(call, *extra)
    leaves, flags, tree = call.batched()

    def each(batched: list[Any], *rows: Any) -> Any:
        it = iter(batched)
        merged = [next(it) if flag else leaf for leaf, flag in zip(leaves, flags, strict=True)]
        return one(call.rebuilt(merged, tree), *rows)

    return jax.vmap(each)([leaf for leaf, flag in zip(leaves, flags, strict=True) if flag], *extra)


def forward(
    layout: Layout, run: Run, params: Any, call: Call, deltas: dict[str, Any] | None,
    last_calls: dict[str, int] | None, paths: frozenset[str],
) -> Forward:  # fmt: skip
    """Run the model with the layers in ``paths`` intercepted; per-sample kinds are vmapped."""
    seen: Counter[str] = Counter()

    def one(sample: Call, sample_deltas: dict[str, Any] | None) -> Any:
        perturbation = _Perturbation(sample_deltas, last_calls)
        outputs = _run(run, params, sample, perturbation, paths)
        seen.update(perturbation.seen)  # counted once, while vmap traces one sample
        return outputs, perturbation.recorded

    outputs, recorded = vmapped(layout, call, one, deltas)
    return Forward(outputs, recorded, seen)


def replaced(layout: Layout, run: Run, params: Any, sample: Call, layer: str, row: Any,
             calls: dict[str, int]) -> Any:  # fmt: skip
    """The outputs of one sample with ``layer``'s output (at its last call) replaced by
    ``row``, both without a batch axis (``sample`` as :meth:`Call.first` for per-sample
    kinds, a batch of one for the others)."""
    batched = not layout.per_sample
    replace = _Perturbation({layer: row[None] if batched else row}, calls, replace=True)
    outputs = _run(run, params, sample, replace, frozenset([layer]))
    if not batched:
        return outputs
    if isinstance(outputs, list | tuple) and outputs and isinstance(outputs[0], Mapping):
        return outputs[0]  # one dict per image (a detector's): the image's own
    return jax.tree_util.tree_map(lambda leaf: leaf[0], outputs)  # every output's one row


def probe(layout: Layout, run: Run, params: Any, call: Call, layers: Sequence[str]) -> Probe:
    """The layers' output shapes and call counts, from an ``eval_shape`` pass (no compute)."""
    found: dict[str, Any] = {}

    def shapes() -> Any:
        result = forward(layout, run, params, call, None, None, frozenset(layers))
        found["calls"] = dict(result.calls)
        return result.recorded

    recorded_shapes = jax.eval_shape(shapes)
    calls = found["calls"]
    for path in layers:
        if calls.get(path, 0) == 0:
            raise LayerError(
                f"layer {path!r} was not called during the forward pass; choose a layer that "
                "the model uses"
            )
    return Probe(recorded_shapes, calls)


def to_core(array: Any) -> Any:
    """A layer's array as the core takes it: float32, laid out as the layer returns it."""
    return array.astype(jnp.float32)


def capture(
    layout: Layout, run: Run, params: Any, call: Call, target: Target, layers: tuple[str, ...],
    gradients: bool,
) -> Captured:  # fmt: skip
    """Forward, zero-perturbation gradients and the target's scores, inside a trace."""
    wanted = frozenset(layers)
    found = probe(layout, run, params, call, layers)
    count = call.image.shape[0]

    def scores_of(deltas: dict[str, Any] | None) -> Any:
        result = forward(layout, run, params, call, deltas, found.calls, wanted)
        scored = score_outputs(target, result.outputs, count, channels_last=layout.channels_last)
        return scored.scores, (result.recorded, result.outputs, scored.indices)

    if gradients:
        zeros = {p: jnp.zeros(found.shapes[p].shape, found.shapes[p].dtype) for p in layers}
        scores, pullback, aux = jax.vjp(scores_of, zeros, has_aux=True)
        if scores.ndim == 1:  # d sum_n S[n] / dA
            (grads,) = pullback(jnp.ones_like(scores))
            layer_gradients = tuple(to_core(grads[path]) for path in layers)
        else:  # d sum_n S[n, k] / dA for each k, as (N, K, ...)
            columns = scores.shape[1]
            eye = jnp.eye(columns, dtype=scores.dtype)
            cotangents = jnp.broadcast_to(eye[:, None, :], (columns, *scores.shape))
            (grads,) = jax.vmap(pullback)(cotangents)
            layer_gradients = tuple(to_core(jnp.moveaxis(grads[path], 0, 1)) for path in layers)
    else:
        scores, aux = scores_of(None)
        layer_gradients = None
    recorded, outputs, indices = aux
    return Captured(
        activations=tuple(to_core(recorded[path]) for path in layers),
        gradients=layer_gradients,
        outputs=outputs,
        scores=scores,
        indices=indices,
    )
