"""Argument checks shared by the methods, metrics and pictures.

Each returns the value in its canonical Python type (numpy scalars become ``int``/``float``)
or raises :class:`~camkit.InputError` naming the argument, the value received and what would
be accepted. ``bool`` is never taken for a number: ``True`` is not a batch size.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from ._errors import InputError

__all__ = [
    "non_negative_int",
    "number",
    "one_of",
    "optional_flag",
    "positive_int",
    "positive_sizes",
    "seed",
]

T = TypeVar("T")


def _is_bool(value: object) -> bool:
    return isinstance(value, bool | np.bool_)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def positive_int(value: object, argument: str) -> int:
    """``value`` as an ``int`` >= 1."""
    if not _is_int(value) or int(value) < 1:  # type: ignore[call-overload]
        raise InputError(f"{argument}={value!r} is not valid; use a positive integer")
    return int(value)  # type: ignore[call-overload]


def non_negative_int(value: object, argument: str) -> int:
    """``value`` as an ``int`` >= 0."""
    if not _is_int(value) or int(value) < 0:  # type: ignore[call-overload]
        raise InputError(f"{argument}={value!r} is not valid; use an integer >= 0")
    return int(value)  # type: ignore[call-overload]


def number(
    value: object, argument: str, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    """``value`` as a finite ``float`` within ``[minimum, maximum]`` (either bound optional)."""
    valid = isinstance(value, numbers.Real) and not _is_bool(value)
    number = float(value) if valid else math.nan  # type: ignore[arg-type]
    low = -math.inf if minimum is None else minimum
    high = math.inf if maximum is None else maximum
    if not (math.isfinite(number) and low <= number <= high):
        if minimum is not None and maximum is not None:
            wanted = f"a number from {minimum:g} to {maximum:g}"
        elif minimum is not None:
            wanted = f"a number >= {minimum:g}"
        else:
            wanted = "a finite number"
        raise InputError(f"{argument}={value!r} is not valid; use {wanted}")
    return number


def one_of(value: T, argument: str, choices: Sequence[Any]) -> T:
    """``value`` if it is one of ``choices``."""
    if not any(value is choice or (type(value) is type(choice) and value == choice)
               for choice in choices):  # fmt: skip
        listed = ", ".join(repr(c) for c in choices)
        raise InputError(f"{argument}={value!r} is not valid; use one of {listed}")
    return value


def optional_flag(value: object, argument: str) -> bool | None:
    """``value`` as ``True``, ``False`` or ``None``."""
    if value is None:
        return None
    if _is_bool(value):
        return bool(value)
    raise InputError(f"{argument}={value!r} is not valid; use True, False or None")


def positive_sizes(value: object, argument: str, wanted: str) -> tuple[int, ...]:
    """``value`` as one to three positive ``int`` (a size per spatial axis); ``wanted`` says
    what they are."""
    sizes = list(value) if isinstance(value, tuple | list) else []
    if 1 <= len(sizes) <= 3 and all(_is_int(v) and int(v) > 0 for v in sizes):
        return tuple(int(v) for v in sizes)
    raise InputError(f"{argument}={value!r} is not valid; use {wanted}")


def seed(value: object) -> int | None:
    """A random seed: ``None`` (fresh randomness) or an integer >= 0."""
    return None if value is None else non_negative_int(value, "seed")
