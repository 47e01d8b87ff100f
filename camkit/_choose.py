"""The layer ``layer=None`` explains: the last one whose every position reaches the score.

Candidates are the layers of the model's layer table with a spatial output over the inputs
(feature maps in any layout, token outputs laid out as a grid), in the order their outputs
appear. Taking simply the last one fails on transformers: a vision transformer that classifies
its class token gives the patch tokens of its last blocks no gradient at all (the final norm and
the MLP act per token), so their Grad-CAM is blank. So, from the last candidate backwards, the
first layer through which at least half the positions receive a gradient of the target's score
is chosen: on a CNN, the last feature map, as before; on a ViT or DeiT, the input norm of the
last block (whose attention mixes the patches into the class token); on a Swin or ConvNeXt,
the last stage. One capture with gradients on the first sample, once per model and input shape.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from ._errors import LayerError, TargetError
from ._inputs import ModelInputs
from ._layout import LayerInfo, LayerTable, to_channels_first
from ._protocol import ActivationGradientProvider
from ._targets import ClassTarget, SegmentationTarget, SoftmaxTarget, Target

__all__ = ["REACH", "choose_layer"]

#: The share of a layer's positions that must receive a gradient for it to be chosen.
REACH = 0.5
#: How many candidates one capture takes at a time.
_CHUNK = 8


def _first_sample(target: Target) -> Target:
    """``target`` for the first sample of the batch alone."""
    if isinstance(target, ClassTarget | SoftmaxTarget) and isinstance(target.index, tuple):
        return type(target)(target.index[0])
    if isinstance(target, SegmentationTarget) and np.ndim(target.mask) == 3:
        return SegmentationTarget(target.class_index, target.mask[:1])
    return target


def _reach(provider: ActivationGradientProvider, gradient: object, info: LayerInfo,
           table: LayerTable) -> float:  # fmt: skip
    """The share of ``info``'s positions where the gradient is not zero in every channel."""
    grid = to_channels_first(gradient, info.layout, table.input_size)  # type: ignore[arg-type]
    xp = array_namespace(grid)
    touched = xp.astype(xp.sum(xp.abs(grid), axis=1) > 0, xp.float32)
    return float(provider.to_numpy(xp.mean(touched)))


def _reaching(
    provider: ActivationGradientProvider, sample: ModelInputs, target: Target,
    chunk: list[LayerInfo], table: LayerTable,
) -> str | None:  # fmt: skip
    """The last layer of ``chunk`` that the score reaches, if any."""
    try:
        capture = provider.capture(sample, [c.name for c in chunk], target, gradients=True)
        pairs = list(zip(chunk, capture.gradients or (), strict=True))
    except LayerError:  # one of them is off the path to the score: one at a time
        pairs = []
        for info in chunk:
            try:
                captured = provider.capture(sample, [info.name], target, gradients=True)
            except LayerError:
                continue
            pairs.append((info, (captured.gradients or (None,))[0]))
    for info, gradient in reversed(pairs):
        if gradient is not None and _reach(provider, gradient, info, table) >= REACH:
            return info.name
    return None


def choose_layer(
    provider: ActivationGradientProvider, inputs: ModelInputs, target: Target, table: LayerTable
) -> str:
    """The layer ``layer=None`` explains for these inputs (see the module's docstring)."""
    candidates = table.explainable()
    if not candidates:
        raise LayerError(
            "no layer of the model has an output camkit can read as a map over the inputs "
            f"(spatial size {table.input_size}): the last layers are {table.describe(table.rows)}; "
            "pass layer= a layer with spatial axes and, where its layout is unknown, layout="
        )
    if len(candidates) == 1:
        return candidates[0].name
    sample = inputs.rows(np.zeros(1, np.int64), inputs.image[:1])
    try:
        for end in range(len(candidates), 0, -_CHUNK):
            chunk = candidates[max(0, end - _CHUNK) : end]
            chosen = _reaching(provider, sample, _first_sample(target), chunk, table)
            if chosen is not None:
                return chosen
    except TargetError:  # a target that cannot score one sample alone
        pass
    return candidates[-1].name
