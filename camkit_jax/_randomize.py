"""Randomized JAX models, for the parameter-randomization sanity check.

A JAX model's parameters are a pytree, so a randomized model is a new pytree with some leaves
replaced, never an edit: an NNX module is cloned (``nnx.clone``) and the clone's parameters
set; a Linen model gets a new variables dict (``batch_stats`` and other collections kept); an
Equinox module is rebuilt by ``eqx.tree_at``; a :class:`~camkit_jax.FunctionSplit` gets new
``params``. No kind keeps its layers' initializers (NNX and Equinox modules do not store
them), so every floating leaf of a chosen layer gets :func:`camkit.provider.rescaled_normal`
draws, seeded per layer and leaf, on the leaf's device and in its dtype.

The layers that own parameters: an NNX or Equinox module holding parameters as its own
attributes, a Linen module's entry of ``params`` holding arrays, or a top-level entry of a
``FunctionSplit``'s ``params`` (whose forward order camkit cannot see: they are taken in their
own order, a dict's insertion order). ``""`` names the model's own parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from camkit import provider as kit
from camkit.provider import CapabilityError, LayerTable

from . import FunctionSplit, Linen
from ._kinds import EquinoxKind, FunctionKind, Kind, LinenKind, NnxKind, _get_path

__all__ = ["parameter_layers", "randomized"]


def _is_floating(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.floating))


def _new_leaf(leaf: Any, seed: int) -> Any:
    """``leaf``'s new values, as the same kind of array: a JAX one is placed like the leaf,
    committed to its devices only if the leaf is (a compiled function traces again for
    arguments committed otherwise)."""
    values = kit.rescaled_normal(np.asarray(leaf), seed)
    if not isinstance(leaf, jax.Array):
        return values
    return jax.device_put(values, leaf.sharding if leaf.committed else None)


def _join(path: Sequence[Any]) -> str:
    """An NNX state path (names and list indices) as a dotted layer name."""
    return ".".join(map(str, path))


def _new_tree(tree: Any, seed: int, owner: str) -> Any:
    """``tree`` with every floating leaf replaced, each seeded by its path."""

    def replace(path: Any, leaf: Any) -> Any:
        if not _is_floating(leaf):
            return leaf
        return _new_leaf(leaf, kit.parameter_seed(seed, owner, jax.tree_util.keystr(path)))

    return jax.tree_util.tree_map_with_path(replace, tree)


# -- Flax NNX ----------------------------------------------------------------------------------


def _nnx_parameters(model: Any) -> list[tuple[str, str, Any]]:
    """``(owner, name, variable)`` for every ``nnx.Param`` of ``model``."""
    from flax import nnx

    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return [(_join(path[:-1]), str(path[-1]), variable) for path, variable in flat]


def _nnx_randomized(kind: NnxKind, layers: Sequence[str], seed: int) -> Any:
    from flax import nnx

    copy = nnx.clone(kind.model)
    for owner, name, variable in _nnx_parameters(copy):
        value = variable.get_value()
        if owner in layers and _is_floating(value):
            variable.set_value(_new_leaf(value, kit.parameter_seed(seed, owner, name)))
    return copy


# -- Flax Linen --------------------------------------------------------------------------------


def _linen_owners(params: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The entries of ``params`` holding arrays directly, by dotted path."""
    found = []
    if any(not isinstance(value, Mapping) for value in params.values()):
        found.append(prefix.rstrip("."))
    for key, value in params.items():
        if isinstance(value, Mapping):
            found += _linen_owners(value, f"{prefix}{key}.")
    return found


def _linen_params(
    params: Mapping[str, Any], layers: Sequence[str], seed: int, prefix: str = ""
) -> dict[str, Any]:
    owner = prefix.rstrip(".")
    rebuilt: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            rebuilt[key] = _linen_params(value, layers, seed, f"{prefix}{key}.")
        elif owner in layers:
            rebuilt[key] = _new_tree(value, seed, f"{owner}/{key}")
        else:
            rebuilt[key] = value
    return rebuilt


def _linen_randomized(kind: LinenKind, layers: Sequence[str], seed: int) -> Linen:
    variables = {**kind.variables, "params": _linen_params(kind.variables["params"], layers, seed)}
    return Linen(kind.module, variables, kind.apply_kwargs)


# -- Equinox -----------------------------------------------------------------------------------


def _equinox_modules(kind: EquinoxKind) -> dict[str, Any]:
    return {"": kind.model, **kind.modules()}


def _equinox_fields(module: Any) -> list[str]:
    """The fields of an Equinox module holding floating arrays directly."""
    return [
        field.name
        for field in dataclasses.fields(module)
        if isinstance(getattr(module, field.name), jax.Array | np.ndarray)
        and _is_floating(getattr(module, field.name))
    ]


def _equinox_randomized(kind: EquinoxKind, layers: Sequence[str], seed: int) -> Any:
    import equinox as eqx

    modules = _equinox_modules(kind)
    places = [(path, name) for path in layers for name in _equinox_fields(modules[path])]

    def where(model: Any) -> list[Any]:
        return [getattr(_get_path(model, path.split(".") if path else []), n) for path, n in places]

    new = [
        _new_leaf(getattr(modules[path], name), kit.parameter_seed(seed, path, name))
        for path, name in places
    ]
    return eqx.tree_at(where, kind.model, replace=new)


# -- function pairs ----------------------------------------------------------------------------


def _entries(params: Any) -> dict[str, Any]:
    """A ``FunctionSplit``'s ``params`` as its top-level entries by name (``""``: all of it)."""
    if isinstance(params, Mapping):
        return {str(key): value for key, value in params.items()}
    if isinstance(params, list | tuple):
        return {str(index): value for index, value in enumerate(params)}
    return {"": params}


def _function_randomized(kind: FunctionKind, layers: Sequence[str], seed: int) -> FunctionSplit:
    params = kind.function_split.params
    new = {
        name: _new_tree(value, seed, name) if name in layers else value
        for name, value in _entries(params).items()
    }
    if isinstance(params, Mapping):
        rebuilt: Any = {key: new[str(key)] for key in params}
    elif isinstance(params, list | tuple):
        rebuilt = type(params)(new[str(index)] for index in range(len(params)))
    else:
        rebuilt = new[""]
    return FunctionSplit(kind.function_split.features, kind.function_split.head, rebuilt)


# -- every kind --------------------------------------------------------------------------------


def _owners(kind: Kind) -> list[str]:
    """The layers of ``kind`` that own floating parameters, in the model's own order."""
    if isinstance(kind, NnxKind):
        owners = [owner for owner, _, variable in _nnx_parameters(kind.model)
                  if _is_floating(variable.get_value())]  # fmt: skip
        return list(dict.fromkeys(owners))
    if isinstance(kind, LinenKind):
        return _linen_owners(kind.variables.get("params", {}))
    if isinstance(kind, EquinoxKind):
        return [path for path, module in _equinox_modules(kind).items() if _equinox_fields(module)]
    if isinstance(kind, FunctionKind):
        entries = _entries(kind.function_split.params)
        return [name for name, value in entries.items()
                if any(map(_is_floating, jax.tree_util.tree_leaves(value)))]  # fmt: skip
    raise CapabilityError(f"camkit cannot randomize the parameters of a {kind.name}")


def parameter_layers(kind: Kind, table: LayerTable) -> list[str]:
    """The layers owning parameters, in forward order (a ``FunctionSplit``'s in their own)."""
    owners = _owners(kind)
    return owners if isinstance(kind, FunctionKind) else kit.forward_order(owners, table, ".")


def randomized(kind: Kind, layers: Sequence[str], seed: int) -> object:
    """A new model of ``kind``'s form with the parameters of ``layers`` re-drawn."""
    known = dict.fromkeys(_owners(kind))
    chosen = [kit.find_layer(name, known, kind.name, argument="layers") for name in layers]
    with kit.model_lock(kind.owner):
        if isinstance(kind, NnxKind):
            return _nnx_randomized(kind, chosen, seed)
        if isinstance(kind, LinenKind):
            return _linen_randomized(kind, chosen, seed)
        if isinstance(kind, EquinoxKind):
            return _equinox_randomized(kind, chosen, seed)
        if isinstance(kind, FunctionKind):
            return _function_randomized(kind, chosen, seed)
    raise CapabilityError(f"camkit cannot randomize the parameters of a {kind.name}")
