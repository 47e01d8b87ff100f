"""The capture, written to be traced: forward, zero-perturbation gradients and scores.

The chosen layer's output ``A`` is intercepted and replaced by ``A + delta`` with ``delta = 0``;
``jax.value_and_grad`` with respect to ``delta`` is then exactly ``dS/dA``. An ``eval_shape``
probe first gives each layer's output shape and call count: a layer called several times is
captured at its last call. Per-sample kinds (Equinox) are vmapped over the batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from camkit.provider import LayerError, Target, score_outputs

from ._kinds import Layout, Run

__all__ = ["Captured", "Forward", "Probe", "capture", "forward", "probe", "to_core"]


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


def forward(
    layout: Layout, run: Run, params: Any, x: Any, deltas: dict[str, Any] | None,
    last_calls: dict[str, int] | None, paths: frozenset[str],
) -> Forward:  # fmt: skip
    """Run the model with the layers in ``paths`` intercepted; per-sample kinds are vmapped."""
    if not layout.per_sample:
        perturbation = _Perturbation(deltas, last_calls)
        outputs = run(params, x, perturbation, paths)
        return Forward(outputs, perturbation.recorded, perturbation.seen)
    seen: Counter[str] = Counter()

    def one(sample: Any, sample_deltas: dict[str, Any] | None) -> Any:
        perturbation = _Perturbation(sample_deltas, last_calls)
        outputs = run(params, sample, perturbation, paths)
        seen.update(perturbation.seen)  # counted once, while vmap traces one sample
        return outputs, perturbation.recorded

    outputs, recorded = jax.vmap(one)(x, deltas)
    return Forward(outputs, recorded, seen)


def replaced(layout: Layout, run: Run, params: Any, sample: Any, layer: str, row: Any,
             calls: dict[str, int]) -> Any:  # fmt: skip
    """The outputs of one sample with ``layer``'s output (at its last call) replaced by
    ``row``, both without a batch axis."""
    batched = not layout.per_sample
    replace = _Perturbation({layer: row[None] if batched else row}, calls, replace=True)
    outputs = run(params, sample, replace, frozenset([layer]))
    return outputs[0] if batched else outputs


def probe(layout: Layout, run: Run, params: Any, x: Any, layers: Sequence[str]) -> Probe:
    """The layers' output shapes and call counts, from an ``eval_shape`` pass (no compute)."""
    found: dict[str, Any] = {}

    def shapes() -> Any:
        result = forward(layout, run, params, x, None, None, frozenset(layers))
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


def to_core(layout: Layout, array: Any) -> Any:
    """A layer's array as the core takes it: float32, channels-first."""
    array = array.astype(jnp.float32)
    if layout.channels_last and array.ndim == 4:
        return jnp.transpose(array, (0, 3, 1, 2))
    return array


def capture(
    layout: Layout, run: Run, params: Any, x: Any, target: Target, layers: tuple[str, ...],
    gradients: bool,
) -> Captured:  # fmt: skip
    """Forward, zero-perturbation gradients and the target's scores, inside a trace."""
    wanted = frozenset(layers)
    found = probe(layout, run, params, x, layers)

    def total_score(deltas: dict[str, Any] | None) -> Any:
        result = forward(layout, run, params, x, deltas, found.calls, wanted)
        scored = score_outputs(
            target, result.outputs, x.shape[0], channels_last=layout.channels_last
        )
        return jnp.sum(scored.scores), (result.recorded, result.outputs, scored.scores,
                                        scored.indices)  # fmt: skip

    if gradients:
        zeros = {p: jnp.zeros(found.shapes[p].shape, found.shapes[p].dtype) for p in layers}
        (_, aux), grads = jax.value_and_grad(total_score, has_aux=True)(zeros)
        layer_gradients = tuple(to_core(layout, grads[path]) for path in layers)
    else:
        _, aux = total_score(None)
        layer_gradients = None
    recorded, outputs, scores, indices = aux
    return Captured(
        activations=tuple(to_core(layout, recorded[path]) for path in layers),
        gradients=layer_gradients,
        outputs=outputs,
        scores=scores,
        indices=indices,
    )
