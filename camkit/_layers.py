"""Layers: finding the one a user named, and choosing one automatically."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ._errors import LayerError, closest_names

__all__ = ["find_layer", "last_spatial_layer"]


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


def last_spatial_layer(
    calls: Sequence[tuple[str, tuple[int, ...]]],
    is_spatial: Callable[[tuple[int, ...]], bool],
    model_name: str,
    input_shape: tuple[int, ...],
) -> str:
    """The layer whose spatial output came last in a forward pass.

    ``calls`` lists ``(layer name, output shape)`` in the order the outputs were produced (a
    container completes after its children, so it wins over its last child); ``is_spatial``
    tells a feature map of the backend's layout from other outputs.
    """
    for name, shape in reversed(calls):
        if is_spatial(shape):
            return name
    raise LayerError(
        f"no layer of {model_name} outputs a spatial map for inputs of shape {input_shape}; "
        "pass layer= (for a vision transformer, a block whose output is (N, tokens, C), with "
        "grid=(h, w) if it is not square)"
    )
