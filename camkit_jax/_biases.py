"""The layers with a bias in each kind of JAX model, and their biases as FullGrad reads them.

A convolution's or linear layer's bias ``b`` is added to its output's channel axis; a batch
normalization in inference is the affine map ``gamma (z - mean) / sqrt(var + eps) + beta``,
whose effective bias is ``beta - mean * gamma / sqrt(var + eps)``. Each kind says which layers
hold one:

- Flax NNX: ``nnx.Conv``, ``nnx.ConvTranspose``, ``nnx.Linear`` with a bias, ``nnx.BatchNorm``
  normalizing the last axis (camkit runs an eval-mode copy: running statistics);
- Flax Linen: the same modules as found by a shape-only pass through ``intercept_methods`` (a
  Linen module's type and ``epsilon`` live in its definition, not in its variables), a
  ``BatchNorm`` counted where it uses its running average;
- Equinox: ``eqx.nn.Conv`` and ``eqx.nn.ConvTranspose`` with a bias (its batch normalization
  keeps its statistics in a separate state the model is not called with);
- a ``FunctionSplit`` has no layers to read: it has no bias capability.

The values are read from the model at each call, so a trained-on model gives its new biases.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from camkit import provider as kit
from camkit.provider import BiasKind

from ._kinds import EquinoxKind, Kind, LinenKind, NnxKind

__all__ = ["BiasLayer", "bias_layers", "effective_biases", "has_biases"]


class BiasLayer(NamedTuple):
    """A layer with a bias: what holds it, and a batch normalization's ``epsilon``."""

    kind: BiasKind
    epsilon: float = 0.0


#: Linen's layers with a bias, per module and input signature (a shape-only pass finds them).
_LINEN_LAYERS: kit.ModelTable[dict[Hashable, dict[str, BiasLayer]]] = kit.ModelTable(dict)


def has_biases(kind: Kind) -> bool:
    """Whether camkit can read the biases of this kind of model."""
    return isinstance(kind, NnxKind | LinenKind | EquinoxKind)


def _normalization(mean: Any, var: Any, scale: Any, bias: Any, epsilon: float) -> jax.Array:
    """``beta - mean * gamma / sqrt(var + eps)``, float32 (``scale``/``bias`` ``None``: 1, 0)."""
    factor = jax.lax.rsqrt(jnp.asarray(var, jnp.float32) + epsilon)
    if scale is not None:
        factor = factor * jnp.asarray(scale, jnp.float32)
    shift = jnp.zeros_like(factor) if bias is None else jnp.asarray(bias, jnp.float32)
    return shift - jnp.asarray(mean, jnp.float32) * factor


def _value(variable: Any) -> Any:
    return None if variable is None else variable[...]


def _nnx_layers(kind: NnxKind) -> dict[str, BiasLayer]:
    nnx = kind.nnx
    found: dict[str, BiasLayer] = {}
    for path, module in kind.modules().items():
        if isinstance(module, nnx.Conv | nnx.ConvTranspose) and module.bias is not None:
            found[path] = BiasLayer("convolution")
        elif isinstance(module, nnx.Linear) and module.bias is not None:
            found[path] = BiasLayer("linear")
        elif isinstance(module, nnx.BatchNorm) and module.axis == -1:
            found[path] = BiasLayer("normalization", float(module.epsilon))
    return found


def _nnx_bias(kind: NnxKind, path: str, layer: BiasLayer) -> jax.Array:
    module = kind.modules()[path]
    if layer.kind != "normalization":
        return jnp.asarray(module.bias[...], jnp.float32)
    return _normalization(
        module.mean[...], module.var[...], _value(module.scale), _value(module.bias),
        layer.epsilon,
    )  # fmt: skip


def _linen_layers(
    kind: LinenKind, run_shapes: Callable[[], Any], key: Hashable
) -> dict[str, BiasLayer]:
    linen = kind.linen
    known = _LINEN_LAYERS.get(kind.owner)
    if key in known:
        return known[key]
    found: dict[str, BiasLayer] = {}

    def interceptor(call: Any, args: Any, kwargs: Any, context: Any) -> Any:
        module, path = context.module, ".".join(context.module.path)
        if context.method_name == "__call__" and path:
            if isinstance(module, linen.Conv | linen.ConvTranspose) and module.use_bias:
                found[path] = BiasLayer("convolution")
            elif isinstance(module, linen.Dense) and module.use_bias:
                found[path] = BiasLayer("linear")
            elif isinstance(module, linen.BatchNorm) and module.axis == -1:
                given = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
                if module.use_running_average if given is None else given:
                    found[path] = BiasLayer("normalization", float(module.epsilon))
        return call(*args, **kwargs)

    with linen.intercept_methods(interceptor):
        run_shapes()
    known[key] = found
    return found


def _linen_bias(kind: LinenKind, path: str, layer: BiasLayer) -> jax.Array:
    def at(tree: Any) -> Any:
        for part in path.split("."):
            tree = tree.get(part, {}) if hasattr(tree, "get") else {}
        return tree

    params = at(kind.variables.get("params", {}))
    if layer.kind != "normalization":
        return jnp.asarray(params["bias"], jnp.float32)
    stats = at(kind.variables.get("batch_stats", {}))
    return _normalization(
        stats["mean"], stats["var"], params.get("scale"), params.get("bias"), layer.epsilon
    )


def _equinox_layers(kind: EquinoxKind) -> dict[str, BiasLayer]:
    nn = kind.eqx.nn
    return {
        path: BiasLayer("convolution")
        for path, module in kind.modules().items()
        if isinstance(module, nn.Conv | nn.ConvTranspose) and module.bias is not None
    }


def bias_layers(kind: Kind, run_shapes: Callable[[], Any], key: Hashable) -> dict[str, BiasLayer]:
    """Every layer of ``kind``'s model with a bias on its output's channel axis.
    ``run_shapes()`` runs the model shape-only on the inputs of signature ``key`` (Linen's
    layers are found so)."""
    if isinstance(kind, NnxKind):
        return _nnx_layers(kind)
    if isinstance(kind, LinenKind):
        return _linen_layers(kind, run_shapes, key)
    if isinstance(kind, EquinoxKind):
        return _equinox_layers(kind)
    return {}


def effective_biases(kind: Kind, layers: dict[str, BiasLayer]) -> dict[str, jax.Array]:
    """The ``(C,)`` float32 bias of each of ``layers``, as the model holds it now."""
    if isinstance(kind, NnxKind):
        return {path: _nnx_bias(kind, path, layer) for path, layer in layers.items()}
    if isinstance(kind, LinenKind):
        return {path: _linen_bias(kind, path, layer) for path, layer in layers.items()}
    modules = kind.modules()
    return {path: jnp.asarray(modules[path].bias, jnp.float32).reshape(-1) for path in layers}
