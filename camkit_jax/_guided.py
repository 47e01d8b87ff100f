"""Guided backpropagation for JAX: a function re-run with every ReLU's backward pass guided.

JAX has no module to hook: a ReLU is an equation of the function's jaxpr, ``max(x, 0)`` (what
``jax.nn.relu``, ``flax.nnx.relu``, ``flax.linen.relu`` and ``jnp.maximum(x, 0)`` lower to, the
first three inside a ``custom_jvp`` and a ``jit``). :func:`guided` traces the function to a
jaxpr and evaluates it with an interpreter that binds every equation as it is, except:

- ``max(x, 0)`` (one operand a literal zero, the result shaped like the other) becomes
  :func:`guided_relu`, whose backward pass is Springenberg et al.'s rule
  ``dL/dx = [x > 0] * ReLU(dL/dy)``;
- calls (``jit``, ``closed_call``, ``remat``) and ``custom_jvp`` functions holding a ReLU are
  evaluated inline by the same interpreter (the custom JVP of ``jax.nn.relu`` only fixes its
  derivative at 0, which the guided rule defines anyway);
- ``scan``, ``while`` and ``cond`` holding a ReLU are bound again with their bodies rewritten.

A ReLU anywhere else (inside a ``custom_vjp``, whose backward pass is the user's own) cannot be
guided, and is a :class:`~camkit.CapabilityError`, never a silently standard gradient. The model
and every function it is made of stay as they are: only the interpreter's copy is guided.

Springenberg et al., "Striving for Simplicity: The All Convolutional Net", ICLR-W 2015
(arXiv:1412.6806).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core

from camkit.provider import CapabilityError

__all__ = ["guided", "guided_relu"]

#: Calls whose body the interpreter runs inline.
_INLINE_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
                 "core_call": "call_jaxpr", "remat2": "jaxpr", "checkpoint": "jaxpr"}  # fmt: skip
#: Control flow bound again with its bodies rewritten: the parameters holding bodies.
_CONTROL_FLOW = {"scan": ("jaxpr",), "while": ("cond_jaxpr", "body_jaxpr"), "cond": ("branches",)}


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """``max(x, 0)``, whose backward pass lets through only positive gradients at positive
    inputs: ``dL/dx = [x > 0] * ReLU(dL/dy)``."""
    return _maximum_zero(x)


def _maximum_zero(x: jax.Array) -> jax.Array:
    # zeros as an array, not a literal 0: not a ReLU to guide again if traced a second time
    return jnp.maximum(x, jnp.zeros_like(x))


def _guided_forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _maximum_zero(x), x > 0


def _guided_backward(positive: jax.Array, cotangent: jax.Array) -> tuple[jax.Array]:
    passed = positive & (cotangent > 0)
    return (jnp.where(passed, cotangent, jnp.zeros_like(cotangent)),)


guided_relu.defvjp(_guided_forward, _guided_backward)


def _is_zero(atom: Any) -> bool:
    return isinstance(atom, core.Literal) and bool(np.all(np.asarray(atom.val) == 0))


def _relu_operand(eqn: Any) -> int | None:
    """The position of ``x`` in an equation ``max(x, 0)`` shaped like ``x``; else ``None``."""
    if eqn.primitive.name != "max" or len(eqn.invars) != 2:
        return None
    for position, other in ((0, 1), (1, 0)):
        operand = eqn.invars[position]
        if _is_zero(eqn.invars[other]) and not _is_zero(operand):
            if operand.aval.shape == eqn.outvars[0].aval.shape:
                return position
    return None


def _open(jaxpr: Any) -> Any:
    return jaxpr.jaxpr if isinstance(jaxpr, core.ClosedJaxpr) else jaxpr


def _has_relu(jaxpr: Any) -> bool:
    """Whether a jaxpr (open or closed) holds a ReLU, at any depth."""
    inner = _open(jaxpr)
    return any(
        _relu_operand(eqn) is not None or any(map(_has_relu, core.jaxprs_in_params(eqn.params)))
        for eqn in inner.eqns
    )


def _bodies(value: Any) -> Iterator[Any]:
    """The jaxprs a parameter holds: itself, or the items of a tuple of them."""
    items = value if isinstance(value, tuple) else (value,)
    yield from (item for item in items if isinstance(item, core.ClosedJaxpr | core.Jaxpr))


def _rewritten(closed: Any) -> Any:
    """A closed jaxpr with the same signature whose ReLUs are guided."""
    if not _has_relu(closed):
        return closed
    shapes = [
        jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype, weak_type=v.aval.weak_type)
        for v in closed.jaxpr.invars
    ]
    return jax.make_jaxpr(lambda *args: _evaluate(closed.jaxpr, closed.consts, args))(*shapes)


def _equation(eqn: Any, values: list[Any]) -> list[Any]:
    """One equation's outputs, with its ReLUs guided."""
    name = eqn.primitive.name
    position = _relu_operand(eqn)
    if position is not None:
        return [guided_relu(values[position])]
    params = dict(eqn.params)
    if name in _INLINE_CALLS and _has_relu(params[_INLINE_CALLS[name]]):
        body = params[_INLINE_CALLS[name]]
        consts = body.consts if isinstance(body, core.ClosedJaxpr) else ()
        return _evaluate(_open(body), consts, values)
    if name == "custom_jvp_call" and _has_relu(params["call_jaxpr"]):
        body = params["call_jaxpr"]
        return _evaluate(body.jaxpr, body.consts, values)
    if name in _CONTROL_FLOW and any(
        _has_relu(body) for key in _CONTROL_FLOW[name] for body in _bodies(params[key])
    ):
        for key in _CONTROL_FLOW[name]:
            value = params[key]
            params[key] = (
                tuple(map(_rewritten, value)) if isinstance(value, tuple) else _rewritten(value)
            )
        eqn = eqn.replace(params=params)
    elif any(map(_has_relu, core.jaxprs_in_params(params))):
        raise CapabilityError(
            f"guided backpropagation: the model applies a ReLU inside {name!r} (a custom_vjp "
            "or other transformation with its own backward pass), which camkit cannot guide; "
            "apply the ReLU outside it, or use a method that needs no input gradients"
        )
    with eqn.ctx.manager:
        outputs = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
    return list(outputs) if eqn.primitive.multiple_results else [outputs]


def _evaluate(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    """Evaluate ``jaxpr`` on ``args`` with its ReLUs guided."""
    env: dict[Any, Any] = {}

    def read(atom: Any) -> Any:
        return atom.val if isinstance(atom, core.Literal) else env[atom]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        outputs = _equation(eqn, [read(atom) for atom in eqn.invars])
        for var, value in zip(eqn.outvars, outputs, strict=True):
            if not isinstance(var, core.DropVar):
                env[var] = value
    return [read(atom) for atom in jaxpr.outvars]


def guided(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (of arrays and pytrees of arrays) with every ReLU it applies guided: the
    same values, and Springenberg et al.'s backward pass through each ReLU."""

    def run(*args: Any) -> Any:
        closed, shapes = jax.make_jaxpr(function, return_shape=True)(*args)
        outputs = _evaluate(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), outputs)

    return run
