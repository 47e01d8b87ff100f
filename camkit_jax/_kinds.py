"""The kinds of JAX model camkit explains: Flax NNX, Flax Linen, Equinox and function pairs.

Each kind says how to list its layers and how to run itself with an *intercept* on chosen
layers: :meth:`split` gives a hashable ``structure``, the ``params`` pytree and
``run(params, args, kwargs, intercept, paths)``, a pure function that calls the model on
``args`` and ``kwargs``, calls ``intercept(path, output)`` on the output of every layer in
``paths`` (``None``: every layer) and returns the model's outputs. The user's model is never
edited: interception happens on throwaway copies. ``layout_of`` says how a layer's output of a
given shape is laid out in the kind's convention.

``owner`` is the object that identifies the model for per-model state and the model's lock
(the module of a Linen pair, which is a fresh tuple at every call).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from camkit.provider import CLASSIFIER_WEIGHTS, InputError, LayerError

from . import FunctionSplit, Linen, _is_linen_pair

__all__ = ["Intercept", "Kind", "Layout", "Run", "Split", "layout_of", "model_kind"]

Intercept = Callable[[str, Any], Any]  # (layer path, output) -> output
#: (params, args, kwargs, intercept, paths) -> outputs
Run = Callable[[Any, tuple[Any, ...], dict[str, Any], Intercept, frozenset[str] | None], Any]


class Layout(NamedTuple):
    """How a model kind takes its inputs: one sample at a time (vmapped) or a batch, and
    whether its arrays are channels-last."""

    per_sample: bool
    channels_last: bool


class Split(NamedTuple):
    """A model as a hashable ``structure``, its ``params`` and a pure ``run``."""

    structure: Any
    params: Any
    run: Run


class Kind(Protocol):
    layout: Layout
    owner: object
    name: str
    capabilities: frozenset[str]

    def modules(self) -> dict[str, Any]: ...

    def split(self) -> Split: ...

    def classifier_weights(self) -> Any: ...


def layout_of(layout: Layout, ndim: int, rank: int) -> str | None:
    """How an output of ``ndim`` axes (batch included) is laid out in a kind's convention, for
    inputs with ``rank`` spatial axes: feature maps in the kind's channel order, ``(N, T, C)``
    over images as tokens; ``None`` for other outputs."""
    if ndim == rank + 2:
        return "channels_last" if layout.channels_last else "channels_first"
    if ndim == 3 and rank >= 2:
        return "tokens"
    return None


# -- Flax NNX ----------------------------------------------------------------------------------

#: The intercepts of the NNX copy being run, by ``id`` of its submodules.
_NNX_INTERCEPTS: contextvars.ContextVar[Mapping[int, tuple[str, Intercept]]] = (
    contextvars.ContextVar("camkit_nnx_intercepts", default=types.MappingProxyType({}))
)


_INTERCEPTING: dict[type, type] = {}


def _intercepting_class(base: type) -> type:
    """``base`` with a ``__call__`` that passes its output through the intercept registered for
    the instance, if any. One class per base class, ever: NNX registers every Module subclass,
    so a class per call would grow without bound."""
    if base in _INTERCEPTING:
        return _INTERCEPTING[base]

    class Intercepting(base):  # type: ignore[misc, valid-type]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            output = base.__call__(self, *args, **kwargs)
            found = _NNX_INTERCEPTS.get().get(id(self))
            return output if found is None else found[1](found[0], output)

    Intercepting.__name__ = base.__name__
    Intercepting.__qualname__ = base.__qualname__
    return _INTERCEPTING.setdefault(base, Intercepting)


class NnxKind:
    layout = Layout(per_sample=False, channels_last=True)
    capabilities: frozenset[str] = frozenset({CLASSIFIER_WEIGHTS})

    def __init__(self, model: Any) -> None:
        from flax import nnx

        self.nnx = nnx
        self.model = model
        self.owner: object = model
        self.name = type(model).__name__

    def modules(self) -> dict[str, Any]:
        return {
            ".".join(map(str, path)): module
            for path, module in self.nnx.iter_modules(self.model)
            if path
        }

    def split(self) -> Split:
        graphdef, state = self.nnx.split(self.model)
        nnx = self.nnx

        def run(
            params: Any, args: tuple[Any, ...], kwargs: dict[str, Any], intercept: Intercept,
            paths: frozenset[str] | None,
        ) -> Any:  # fmt: skip
            copy = nnx.merge(graphdef, params)
            copy.eval()  # dropout off, batch statistics frozen: on the copy only
            intercepts = {}
            for path, module in nnx.iter_modules(copy):
                name = ".".join(map(str, path))
                if name and (paths is None or name in paths):
                    object.__setattr__(module, "__class__", _intercepting_class(type(module)))
                    intercepts[id(module)] = (name, intercept)
            token = _NNX_INTERCEPTS.set(intercepts)
            try:
                return copy(*args, **kwargs)
            finally:
                _NNX_INTERCEPTS.reset(token)

        return Split(graphdef, state, run)

    def classifier_weights(self) -> Any:
        linears = [m for m in self.modules().values() if isinstance(m, self.nnx.Linear)]
        if not linears:
            raise LayerError("CAM needs an nnx.Linear classifier, and the model has none")
        return jnp.asarray(linears[-1].kernel[...], jnp.float32).T


# -- Flax Linen --------------------------------------------------------------------------------


class LinenKind:
    layout = Layout(per_sample=False, channels_last=True)
    capabilities: frozenset[str] = frozenset({CLASSIFIER_WEIGHTS})

    def __init__(self, module: Any, variables: Any, apply_kwargs: Mapping[str, Any]) -> None:
        import flax.linen

        self.linen = flax.linen
        self.module = module
        self.variables = variables
        self.apply_kwargs = dict(apply_kwargs)
        self.owner: object = module
        self.name = type(module).__name__

    def modules(self) -> dict[str, Any]:
        names: dict[str, Any] = {}

        def walk(tree: Any, prefix: str) -> None:
            for key, value in tree.items():
                if isinstance(value, dict) or hasattr(value, "items"):
                    name = prefix + str(key)
                    names[name] = None
                    walk(value, name + ".")

        walk(self.variables.get("params", {}), "")
        return names

    def split(self) -> Split:
        module, linen, apply_kwargs = self.module, self.linen, self.apply_kwargs

        def run(
            params: Any, args: tuple[Any, ...], kwargs: dict[str, Any], intercept: Intercept,
            paths: frozenset[str] | None,
        ) -> Any:  # fmt: skip
            def interceptor(call: Any, call_args: Any, call_kwargs: Any, context: Any) -> Any:
                output = call(*call_args, **call_kwargs)
                name = ".".join(context.module.path)
                if context.method_name == "__call__" and name and (paths is None or name in paths):
                    output = intercept(name, output)
                return output

            with linen.intercept_methods(interceptor):
                return module.apply(params, *args, **{**apply_kwargs, **kwargs})

        identity: Any = module  # a Linen module is its configuration: equal ones run alike
        try:
            hash(module)
        except TypeError:  # unhashable fields: its identity, kept alive by `run`
            identity = id(module)
        return Split((identity, tuple(sorted(apply_kwargs.items()))), self.variables, run)

    def classifier_weights(self) -> Any:
        kernels = [
            leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(self.variables)
            if getattr(path[-1], "key", None) == "kernel" and np.ndim(leaf) == 2
        ]
        if not kernels:
            raise LayerError("CAM needs a Dense classifier, and the Linen model has none")
        return jnp.asarray(kernels[-1], jnp.float32).T


# -- function pairs ----------------------------------------------------------------------------


class FunctionKind:
    layout = Layout(per_sample=False, channels_last=True)
    capabilities: frozenset[str] = frozenset()

    def __init__(self, split: FunctionSplit) -> None:
        self.function_split = split
        self.owner: object = split
        self.name = "FunctionSplit"

    def modules(self) -> dict[str, Any]:
        return {"features": None}

    def split(self) -> Split:
        features, head = self.function_split.features, self.function_split.head

        def run(
            params: Any, args: tuple[Any, ...], kwargs: dict[str, Any], intercept: Intercept,
            paths: frozenset[str] | None,
        ) -> Any:  # fmt: skip
            activations = features(params, *args, **kwargs)
            if paths is None or "features" in paths:
                activations = intercept("features", activations)
            return head(params, activations)

        return Split((features, head), self.function_split.params, run)

    def classifier_weights(self) -> Any:
        raise LayerError("a FunctionSplit has no classifier layer for CAM")


# -- Equinox -----------------------------------------------------------------------------------


def _get_path(node: Any, parts: Sequence[str]) -> Any:
    for part in parts:
        node = node[int(part)] if isinstance(node, list | tuple) else getattr(node, part)
    return node


@functools.cache
def _intercepted_module_class(eqx: Any) -> type:
    class Intercepted(eqx.Module):  # type: ignore[misc, name-defined]
        """Stands in for a submodule: calls it, then the intercept on its output."""

        inner: Any
        path: str = eqx.field(static=True)
        intercept: Any = eqx.field(static=True)

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return self.intercept(self.path, self.inner(*args, **kwargs))

    return Intercepted


class EquinoxKind:
    """Equinox: the model takes one image, channels-first ``(C, H, W)``, and is vmapped."""

    layout = Layout(per_sample=True, channels_last=False)
    capabilities: frozenset[str] = frozenset({CLASSIFIER_WEIGHTS})

    def __init__(self, model: Any) -> None:
        import equinox

        self.eqx = equinox
        self.model = model
        self.owner: object = model
        self.name = type(model).__name__

    def modules(self) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def walk(node: Any, prefix: str) -> None:
            if isinstance(node, list | tuple):
                children = [(str(i), child) for i, child in enumerate(node)]
            elif isinstance(node, self.eqx.Module):
                children = [(f.name, getattr(node, f.name)) for f in dataclasses.fields(node)]
            else:
                return
            for name, child in children:
                path = prefix + name
                if isinstance(child, self.eqx.Module):
                    found[path] = child
                walk(child, path + ".")

        walk(self.model, "")
        return found

    def split(self) -> Split:
        eqx = self.eqx
        arrays, static = eqx.partition(self.model, eqx.is_array)
        leaves, treedef = jax.tree_util.tree_flatten(static)
        try:
            hash(tuple(leaves))
            structure: Any = (treedef, tuple(leaves))
        except TypeError:  # unhashable static parts: their identities, kept alive by `static`
            structure = (treedef, tuple(id(leaf) for leaf in leaves))
        intercepted = _intercepted_module_class(eqx)
        every_path = tuple(self.modules())  # the closure must not hold the model itself

        def run(
            params: Any, args: tuple[Any, ...], kwargs: dict[str, Any], intercept: Intercept,
            paths: frozenset[str] | None,
        ) -> Any:  # fmt: skip
            model = eqx.combine(params, static)
            chosen = paths if paths is not None else every_path
            # the deepest first: a wrapped parent no longer has its children as attributes
            for path in sorted(chosen, key=lambda p: p.count("."), reverse=True):
                getter = functools.partial(_get_path, parts=path.split("."))
                model = eqx.tree_at(
                    getter, model, replace_fn=lambda inner, p=path: intercepted(inner, p, intercept)
                )
            return model(*args, **kwargs)

        return Split(structure, arrays, run)

    def classifier_weights(self) -> Any:
        linears = [m for m in self.modules().values() if isinstance(m, self.eqx.nn.Linear)]
        if not linears:
            raise LayerError("CAM needs an eqx.nn.Linear classifier, and the model has none")
        return jnp.asarray(linears[-1].weight, jnp.float32)


def model_kind(model: Any) -> Kind:
    """The kind of ``model``; an :class:`~camkit.InputError` for anything else."""
    if isinstance(model, FunctionSplit):
        return FunctionKind(model)
    if isinstance(model, Linen):
        return LinenKind(model.module, model.variables, model.apply_kwargs)
    if _is_linen_pair(model):
        return LinenKind(model[0], model[1], {})
    if "equinox" in sys.modules and isinstance(model, sys.modules["equinox"].Module):
        return EquinoxKind(model)
    flax_nnx = sys.modules.get("flax.nnx")
    if flax_nnx is not None and isinstance(model, flax_nnx.Module):
        return NnxKind(model)
    raise InputError(
        "the jax backend needs a Flax NNX module, a (Linen module, variables) pair, "
        "camkit_jax.Linen, an Equinox module or camkit_jax.FunctionSplit; got "
        f"{type(model).__qualname__}"
    )
