"""camkit's JAX backend: Flax NNX, Flax Linen, Equinox and plain JAX functions.

This module is what the ``camkit`` entry point loads: it registers the backend without importing
jax, flax or equinox. The provider is imported when a JAX model is explained; it is split by
concern: ``_kinds`` (how each kind of model lists its layers and runs with an intercept),
``_trace`` (the capture, written to be traced), ``_cache`` (compiled functions, shared by
models of one structure) and ``_provider``. Models are passed as:

- a Flax NNX module: ``camkit.explain(model, x)``;
- a Flax Linen module with its variables: ``camkit.explain((module, variables), x)``, or
  :class:`Linen` to pass keyword arguments to ``apply`` (``train=False``);
- an Equinox module taking one image ``(C, H, W)``: ``camkit.explain(model, x)`` with ``x``
  ``(N, C, H, W)`` (camkit vmaps it);
- a plain function pair: :class:`FunctionSplit` ``(features, head, params)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import camkit

__all__ = ["FunctionSplit", "Linen", "camkit_backends", "is_jax_model"]


@dataclass(frozen=True, eq=False)
class FunctionSplit:
    """A model given as two JAX functions: ``features(params, x) -> activations`` (the layer
    explained, ``(N, H, W, C)`` or ``(N, T, C)``) and ``head(params, activations) -> outputs``.
    Its one layer is named ``"features"``."""

    features: Callable[[Any, Any], Any]
    head: Callable[[Any, Any], Any]
    params: Any = None


@dataclass(frozen=True, eq=False)
class Linen:
    """A Flax Linen module with its variables, and keyword arguments for ``module.apply``."""

    module: Any
    variables: Mapping[str, Any]
    apply_kwargs: Mapping[str, Any] = field(default_factory=dict)


def _is_linen_pair(model: Any) -> bool:
    linen = sys.modules.get("flax.linen")
    return (
        linen is not None
        and isinstance(model, tuple)
        and len(model) == 2
        and isinstance(model[0], linen.Module)
        and isinstance(model[1], Mapping)
    )


def is_jax_model(model: Any) -> bool:
    """Whether ``model`` is something this backend explains, without importing jax or flax."""
    if isinstance(model, (FunctionSplit, Linen)) or _is_linen_pair(model):
        return True
    for module, attribute in (("flax.nnx", "Module"), ("equinox", "Module")):
        base = getattr(sys.modules.get(module), attribute, None)
        if base is not None and isinstance(model, base):
            return True
    return False


@camkit.hookimpl
def camkit_backends() -> Sequence[camkit.Backend]:
    return [
        camkit.Backend(
            name="jax",
            provider="camkit_jax._provider:JaxProvider",
            can_handle=is_jax_model,
            available=camkit.module_available("jax"),
            priority=10,
            install="pip install 'camkit[jax]'",
        )
    ]
