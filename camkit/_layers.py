"""What every backend does to choose a layer automatically."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ._errors import LayerError

__all__ = ["last_spatial_layer"]


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
