"""The backward pass to the image, written to be traced: input gradients and bias terms.

The image enters the forward pass as a differentiated argument, and each layer whose bias term
is wanted has a zero ``delta`` added to its output (as the capture in ``_trace`` does), so one
vector-Jacobian product gives ``dS/dx`` and every ``dS/dz_l``; ``K`` scores per sample take
``K`` products from the one forward, the VJP ``vmap``-ped over the rows of the identity. With
the guided rule the model's forward pass runs through :func:`camkit_jax._guided.guided`.
Everything returned is channels-first: ``(N, C, *S)``, ``(N, K, C, *S)`` for ``K`` scores.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from camkit.provider import GradientRule, Target, score_outputs

from ._guided import guided
from ._kinds import Layout, Run
from ._trace import Call, forward, probe, to_core

__all__ = ["Backward", "backward"]


class Backward(NamedTuple):
    """What a compiled backward pass to the image returns (see ``FullGradients``)."""

    input_gradients: Any
    bias_terms: tuple[Any, ...]
    outputs: Any
    scores: Any
    indices: Any


def _last_axis_to(x: Any, axis: int) -> Any:
    return jnp.moveaxis(x, -1, axis)


def backward(
    layout: Layout, run: Run, params: Any, call: Call, target: Target, rule: GradientRule,
    layers: tuple[str, ...], channels_last: tuple[bool, ...], biases: dict[str, Any],
) -> Backward:  # fmt: skip
    """``dS/dx`` and ``b_l[c] * dS/dz_l`` for each of ``layers`` (whose outputs are laid out
    channels-last where ``channels_last`` says), inside a trace."""
    wanted = frozenset(layers)
    found = probe(layout, run, params, call, layers) if layers else None
    calls = None if found is None else found.calls
    count = call.image.shape[0]

    def outputs_of(image: Any, deltas: dict[str, Any]) -> Any:
        perturbed = call.with_image(image)
        return forward(layout, run, params, perturbed, deltas, calls, wanted).outputs

    model = guided(outputs_of) if rule == "guided" else outputs_of

    def scores_of(image: Any, deltas: dict[str, Any]) -> Any:
        outputs = model(image, deltas)
        scored = score_outputs(target, outputs, count, channels_last=layout.channels_last)
        return scored.scores, (outputs, scored.indices)

    shapes = {} if found is None else found.shapes
    zeros = {path: jnp.zeros(shapes[path].shape, shapes[path].dtype) for path in layers}
    scores, pullback, (outputs, indices) = jax.vjp(scores_of, call.image, zeros, has_aux=True)
    if scores.ndim == 1:  # d sum_n S[n] / d(x, z)
        image_gradient, gradients = pullback(jnp.ones_like(scores))
        axis = 1
    else:  # d sum_n S[n, k] / d(x, z) for each k, as (N, K, ...)
        columns = scores.shape[1]
        cotangents = jnp.broadcast_to(jnp.eye(columns, dtype=scores.dtype)[:, None, :],
                                      (columns, *scores.shape))  # fmt: skip
        image_gradient, gradients = jax.vmap(pullback)(cotangents)
        image_gradient = jnp.moveaxis(image_gradient, 0, 1)
        gradients = {path: jnp.moveaxis(g, 0, 1) for path, g in gradients.items()}
        axis = 2
    if layout.channels_last:
        image_gradient = _last_axis_to(image_gradient, axis)
    terms = []
    for path, last in zip(layers, channels_last, strict=True):
        gradient = to_core(gradients[path])
        gradient = _last_axis_to(gradient, axis) if last else gradient
        bias = jnp.reshape(biases[path], (-1, *(1,) * (gradient.ndim - axis - 1)))
        terms.append(gradient * bias)
    return Backward(to_core(image_gradient), tuple(terms), outputs, scores, indices)
