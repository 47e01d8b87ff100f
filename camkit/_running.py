"""Running a model on a batch: what inputs a backend accepts, and what a failure of the model
becomes (a :class:`~camkit.ModelError` naming the inputs, chained to the model's own error)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from ._errors import CamkitError, InputError, ModelError

__all__ = ["check_image", "image_size", "running_model"]

#: Channel counts common enough that an axis of this size looks like the channel axis.
_CHANNELS = (1, 3, 4)


def _expected(channels_last: bool) -> str:
    if channels_last:
        return "(N, L, C) signals, (N, H, W, C) images or (N, D, H, W, C) volumes, channels-last"
    return "(N, C, L) signals, (N, C, H, W) images or (N, C, D, H, W) volumes, channels-first"


def check_image(
    shape: tuple[int, ...], dtype: str, *, floating: bool, channels_last: bool = False
) -> None:
    """Raise :class:`~camkit.InputError` unless ``shape`` is a batch of signals, images or
    volumes (3 to 5 axes, at least one sample and one element) of a real floating ``dtype``."""
    if not 3 <= len(shape) <= 5:
        raise InputError(
            f"inputs have shape {shape}; expected a batch: {_expected(channels_last)} — add a "
            "batch axis with inputs[None] for a single one"
        )
    if shape[0] == 0:
        raise InputError(f"inputs have shape {shape}: no samples; pass at least one")
    if 0 in shape[1:]:
        raise InputError(
            f"inputs have shape {shape}: an empty axis; expected {_expected(channels_last)}"
        )
    if not floating:
        raise InputError(
            f"inputs have dtype {dtype}; the model needs real floating-point inputs, scaled "
            "and normalized as in training (for example inputs.astype('float32') / 255)"
        )


def image_size(shape: tuple[int, ...], *, channels_last: bool = False) -> tuple[int, ...]:
    """The spatial size of a batch of ``shape``: ``(L,)``, ``(H, W)`` or ``(D, H, W)``."""
    return tuple(int(s) for s in (shape[1:-1] if channels_last else shape[2:]))


def _layout_hint(shape: tuple[int, ...], channels_last: bool | None) -> str:
    if len(shape) == 3:  # a batch of signals, or one image without its batch axis
        return (
            "; if this is one image rather than a batch of signals, add its batch axis: "
            "inputs[None]"
        )
    if channels_last is None or not 3 <= len(shape) <= 5:
        return ""
    first, last = shape[1] in _CHANNELS, shape[-1] in _CHANNELS
    if channels_last and first and not last:
        return (
            "; the model takes channels-last inputs (N, ..., C) and these look channels-first: "
            "move the channel axis last (np.moveaxis(inputs, 1, -1))"
        )
    if not channels_last and last and not first:
        return (
            "; the model takes channels-first inputs (N, C, ...) and these look channels-last: "
            "move the channel axis first (np.moveaxis(inputs, -1, 1))"
        )
    return ""


def _quoted(error: BaseException, limit: int = 600) -> str:
    """The error's message on one line, without terminal colour codes (Keras adds them)."""
    text = re.sub(r"\s+", " ", re.sub(r"\x1b\[[0-9;]*m", "", str(error))).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def running_model(
    name: str, shape: tuple[int, ...], dtype: str, *, channels_last: bool | None = None
) -> Iterator[None]:
    """Turn any error the model raises inside the block into a :class:`~camkit.ModelError`
    naming the model, the inputs' ``shape`` and ``dtype`` and, where the inputs look like the
    other channel layout than the model's (``channels_last``), the fix. camkit's own errors
    pass through unchanged."""
    try:
        yield
    except CamkitError:
        raise
    except Exception as error:
        raise ModelError(
            f"{name} failed on inputs of shape {tuple(shape)} and dtype {dtype}: "
            f"{type(error).__name__}: {_quoted(error)}{_layout_hint(tuple(shape), channels_last)}"
        ) from error
