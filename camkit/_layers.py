"""Layers: finding the one a user named."""

from __future__ import annotations

from collections.abc import Mapping

from ._errors import LayerError, closest_names

__all__ = ["find_layer"]


def find_layer(
    layer: object,
    layers: Mapping[str, object],
    model_name: str,
    *,
    separator: str | None = None,
    argument: str = "layer",
) -> str:
    """The name, among ``layers`` (name -> layer object, in the model's order), of ``layer``:
    a name, or a layer object compared by identity.

    With a ``separator`` (``"/"`` for Keras paths) a name may also be the last part of one
    path, when exactly one path ends so. Raise :class:`~camkit.LayerError` naming ``argument``
    and the closest valid names.
    """
    example = next(iter(layers), "layer4")
    if isinstance(layer, str):
        if layer in layers:
            return layer
        if separator is not None:
            matches = [path for path in layers if path.rsplit(separator, 1)[-1] == layer]
            if len(matches) == 1:
                return matches[0]
            if matches:
                raise LayerError(
                    f"{argument}={layer!r} is ambiguous; use one of the paths {matches}"
                )
        raise LayerError(
            f"{argument}={layer!r} is not a layer of {model_name}; {closest_names(layer, layers)}"
        )
    if layer is not None and not isinstance(layer, int | float | bool | bytes):
        for name, candidate in layers.items():
            if candidate is layer:
                return name
        raise LayerError(
            f"{argument}={type(layer).__name__}(...) is not a layer of {model_name}; pass one "
            f"of its layers or its name, such as {example!r}"
        )
    raise LayerError(
        f"{argument}={layer!r} is neither a name nor a layer of {model_name}; pass a name "
        f"such as {example!r} or the layer itself"
    )
