"""The compiled functions of the JAX backend, shared by every model of one structure.

A compiled function is a pure function of the model's parameters, so it is keyed by the
model's structure (NNX graph definition, Linen module, Equinox's static fields, the function
pair), never by the model object: a new Equinox model after a training step, or a new NNX
instance of the same architecture, reuses it. The cache is bounded (least recently used dropped
first) and holds structures, never parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import jax

from camkit.provider import CompiledCache

from ._kinds import Layout, Run, Split

__all__ = ["compiled", "trace_count"]

_COMPILED: CompiledCache[Any] = CompiledCache(limit=32)


def compiled(
    split: Split, layout: Layout, name: tuple[Any, ...],
    build: Callable[[Run, Layout], Callable[..., Any]],
) -> tuple[Any, Hashable]:  # fmt: skip
    """The jitted ``build(run, layout)`` for this model structure and ``name``, and its key."""
    key = (split.structure, layout, *name)

    def jitted(traced: Callable[[], None]) -> Any:
        function = build(split.run, layout)  # holds the structure only, never the model

        def counted(*args: Any) -> Any:
            traced()  # Python runs only while JAX traces
            return function(*args)

        return jax.jit(counted)

    return _COMPILED.get(key, jitted), key


def trace_count(keys: list[Hashable] | None = None) -> int:
    """How many times camkit's compiled JAX functions (those under ``keys``) were traced."""
    return _COMPILED.traces(keys)
