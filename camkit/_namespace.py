"""The array namespace of a framework's arrays, for code that must run on all of them.

camkit's math and targets are written against the Python Array API: ``xp =
array_namespace(outputs)`` gives the namespace of numpy, PyTorch, JAX (through
``array-api-compat``) and of any framework whose backend registered a small shim of its own with
:func:`register_namespace` (TensorFlow has no Array API namespace; ``camkit_tf`` registers the
few functions targets use, in the manner of einops' backends).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat

__all__ = ["array_namespace", "device", "register_namespace", "take_rows"]

#: ``(is_array, namespace)`` pairs registered by backends, tried in order.
_SHIMS: list[tuple[Callable[[Any], bool], Any]] = []


def register_namespace(is_array: Callable[[Any], bool], namespace: Any) -> None:
    """Make :func:`array_namespace` return ``namespace`` for arrays where ``is_array`` holds.

    ``namespace`` offers the Array API functions that camkit's targets call on such arrays
    (``asarray``, ``astype``, ``arange``, ``sum``, ``max``, ``argmax``, ``argsort``, ``exp``,
    ``sqrt``, ``abs``, ``maximum``, ``minimum``, ``where``, ``isfinite``, ``all``,
    ``permute_dims``, ``reshape``, ``broadcast_to``, ``stack``, ``concat``, ``zeros``,
    ``full``, ``zeros_like``, ``ones_like``, ``full_like`` and the dtypes ``float32``,
    ``int32``, ``int64``) and ``device(x)``. Registering the same pair again does nothing.
    """
    if not any(shim == (is_array, namespace) for shim in _SHIMS):
        _SHIMS.append((is_array, namespace))


def _shim(arrays: tuple[Any, ...]) -> Any | None:
    present = [a for a in arrays if a is not None and not isinstance(a, int | float | bool)]
    for is_array, namespace in _SHIMS:
        if present and all(is_array(a) for a in present):
            return namespace
    return None


def array_namespace(*arrays: Any) -> Any:
    """The Array API namespace of ``arrays``: array-api-compat's, or a registered shim's."""
    shim = _shim(arrays)
    if shim is not None:
        return shim
    return array_api_compat.array_namespace(*arrays)


def device(array: Any) -> Any:
    """The device of ``array`` in its own framework's terms."""
    shim = _shim((array,))
    if shim is not None:
        return shim.device(array)
    return array_api_compat.device(array)


def take_rows(array: Any, rows: Any) -> Any:
    """``array[rows]`` along the first axis, on ``array``'s own device (``rows``, host
    integers, are moved there first)."""
    xp = array_namespace(array)
    return xp.take(array, xp.asarray(rows, device=device(array)), axis=0)
