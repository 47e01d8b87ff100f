"""What a model is called with: one array, or several inputs with extra arguments, and which of
them the maps are over.

``camkit.explain(model, inputs, image=..., forward_kwargs=...)``: ``inputs`` is one array, a
tuple of positional inputs or a dict of keyword inputs; ``forward_kwargs`` are more keyword
arguments (masks, text, flags); ``image`` names the input the maps are over (a position or a
key; by default the first array with spatial axes). Backends call the model with
:meth:`ModelInputs.call_arguments`, and the perturbation methods and metrics change only the
image, taking every other batched input along with the sample each perturbed row comes from.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ._errors import InputError
from ._namespace import take_rows

__all__ = ["ModelInputs", "as_model_inputs"]

Array = Any


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, str)


@dataclass(frozen=True)
class ModelInputs:
    """A model's inputs: ``given`` (an array, a tuple of positional inputs or a dict of keyword
    inputs), ``forward_kwargs`` (more keyword arguments), and ``key`` (the position or key of
    the image in ``given``; ``None`` when ``given`` is the image itself)."""

    given: Any
    forward_kwargs: Mapping[str, Any] = field(default_factory=dict)
    key: int | str | None = None

    @property
    def image(self) -> Any:
        """The input the maps are over."""
        return self.given if self.key is None else self.given[self.key]

    def with_image(self, image: Any) -> ModelInputs:
        """These inputs with the image replaced."""
        if self.key is None:
            return replace(self, given=image)
        if isinstance(self.given, Mapping):
            return replace(self, given={**self.given, self.key: image})
        given = list(self.given)
        given[self.key] = image  # type: ignore[index]
        return replace(self, given=tuple(given))

    def map_inputs(self, convert: Any) -> ModelInputs:
        """These inputs with ``convert`` applied to every array (the image included)."""

        def each(value: Any) -> Any:
            return convert(value) if _is_array(value) else value

        if self.key is None:
            given = each(self.given)
        elif isinstance(self.given, Mapping):
            given = {k: each(v) for k, v in self.given.items()}
        else:
            given = tuple(each(v) for v in self.given)
        kwargs = {k: each(v) for k, v in self.forward_kwargs.items()}
        return replace(self, given=given, forward_kwargs=kwargs)

    @property
    def count(self) -> int:
        """The batch size: the image's leading axis."""
        return int(self.image.shape[0])

    def rows(self, rows: np.ndarray, image: Any) -> ModelInputs:
        """These inputs for a batch whose row ``b`` comes from sample ``rows[b]``, with
        ``image`` (already of those rows) as the image: every other array with the batch size
        as its leading axis is taken at ``rows``; the others (weights, a text shared by all
        samples) are left as they are."""
        count = self.count

        def take(value: Any) -> Any:
            if len(value.shape) == 0 or int(value.shape[0]) != count:
                return value
            return take_rows(value, rows)

        return self.with_image(None).map_inputs(take).with_image(image)

    def call_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` to call a model as ``model(*args, **kwargs)``: a tuple's items
        are positional, a dict's are keywords, then ``forward_kwargs``."""
        if self.key is None:
            return (self.given,), dict(self.forward_kwargs)
        if isinstance(self.given, Mapping):
            return (), {**self.given, **self.forward_kwargs}
        return tuple(self.given), dict(self.forward_kwargs)

    def signature(self) -> Hashable:
        """Shapes and dtypes of the arrays, values of the rest: what per-shape caches key on."""

        def each(value: Any) -> Hashable:
            if _is_array(value):
                return ("array", tuple(int(s) for s in value.shape), str(value.dtype))
            try:
                hash(value)
            except TypeError:
                return ("object", id(value))
            return ("value", value)

        args, kwargs = self.call_arguments()
        return (self.key, tuple(each(a) for a in args),
                tuple(sorted((k, each(v)) for k, v in kwargs.items())))  # fmt: skip


def _spatial_arrays(items: Mapping[Any, Any]) -> list[Any]:
    return [key for key, value in items.items() if _is_array(value) and len(value.shape) >= 3]


def as_model_inputs(
    inputs: Any, forward_kwargs: Mapping[str, Any] | None = None, image: int | str | None = None
) -> ModelInputs:
    """Check and record what the user passed as ``inputs``, ``forward_kwargs`` and ``image``."""
    if isinstance(inputs, ModelInputs):
        return inputs
    if forward_kwargs is not None and not isinstance(forward_kwargs, Mapping):
        raise InputError(
            f"forward_kwargs={forward_kwargs!r} is not valid; pass a dict of keyword arguments "
            "for the model's forward pass"
        )
    kwargs = dict(forward_kwargs or {})
    if isinstance(inputs, list):
        raise InputError(
            f"inputs is a list of {len(inputs)} items; pass one array (a batch: np.stack the "
            "images), or a tuple (positional) or dict (keyword) of the model's inputs"
        )
    if isinstance(inputs, tuple | Mapping):
        items = dict(inputs) if isinstance(inputs, Mapping) else dict(enumerate(inputs))
        if not items:
            raise InputError("inputs is empty; pass the model's inputs")
        given = dict(inputs) if isinstance(inputs, Mapping) else tuple(inputs)
        if image is None:
            candidates = _spatial_arrays(items)
            if not candidates:
                raise InputError(
                    f"none of the {len(items)} inputs is an array with spatial axes (N, C, ...); "
                    "pass image= the position or key of the input the maps are over"
                )
            image = candidates[0]
        elif image not in items or isinstance(image, bool):
            raise InputError(f"image={image!r} is not one of the inputs; use one of {list(items)}")
        return ModelInputs(given, kwargs, image)
    if image is not None:
        raise InputError(f"image={image!r} needs several inputs; with one array, leave image=None")
    return ModelInputs(inputs, kwargs, None)
