"""The camkit exception hierarchy.

Every error camkit raises on purpose derives from :class:`CamkitError`, and its message names the
argument at fault, the value received and what would be accepted. Errors about bad values also
derive from the matching builtin (``ValueError``, ``TypeError``, ``IndexError``) so that code
written against the builtins keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "BackendError",
    "CamkitError",
    "CapabilityError",
    "InputError",
    "LayerError",
    "ModelError",
    "TargetError",
]


class CamkitError(Exception):
    """Base class of every error camkit raises on purpose."""


class LayerError(CamkitError, ValueError):
    """The ``layer`` argument names no usable layer, or no layer with a spatial output exists."""


class BackendError(CamkitError, RuntimeError):
    """No backend, several tied backends, or a backend whose framework is not installed."""


class CapabilityError(CamkitError, NotImplementedError):
    """The method needs something that the chosen backend or model does not provide."""


class InputError(CamkitError, ValueError):
    """The inputs have the wrong shape, dtype or device, or an option has a bad value."""


class TargetError(CamkitError, IndexError):
    """The ``target`` argument does not fit the model's outputs."""


class ModelError(CamkitError, RuntimeError):
    """The model itself failed while camkit ran it; the original error is chained as the
    ``__cause__`` and quoted in the message, with the shape and dtype of what the model got."""


def closest_names(value: str, names: Iterable[str], limit: int = 5) -> str:
    """Format the valid names most similar to ``value`` for an error message.

    Falls back to the first ``limit`` names when none is similar, so the message always shows
    the user what a valid name looks like.
    """
    names = list(names)
    close = difflib.get_close_matches(value, names, n=limit, cutoff=0.4)
    shown = close or names[:limit]
    label = "closest valid names" if close else "valid names include"
    if len(names) > len(shown):
        label += f" (of {len(names)})"
    return f"{label}: " + ", ".join(repr(n) for n in shown)
