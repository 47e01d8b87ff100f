"""The layer ``layer=None`` explains: the last one whose positions reach the score.

Candidates are the layers of the model's layer table with a spatial output over the inputs
(feature maps in any layout, token outputs laid out as a grid), in the order their outputs
appear. Taking simply the last one fails on transformers: a vision transformer that classifies
its class token gives the patch tokens of its last block's output no gradient at all (the final
norm and the MLP act per token), so their Grad-CAM is blank. So, from the last candidate
backwards, the first layer through which at least half the positions receive a gradient of the
target's score is chosen. Where that layer lies inside a numbered block (``layers.11``,
``Block_11``) whose own output the score does not reach, the block's first layer that it does
reach is taken instead: the block's input norm, not one of its attention's projections. So a
CNN gets its last feature map, as before; a ViT or DeiT the input norm of its last block (whose
attention mixes the patches into the class token), in every framework; a Swin or ConvNeXt its
last stage. Captures with gradients on the first sample decide, once per model and input shape.
"""

from __future__ import annotations

import re

import numpy as np
from array_api_compat import array_namespace

from ._errors import LayerError, TargetError
from ._inputs import ModelInputs
from ._layout import LayerInfo, LayerTable, to_channels_first
from ._protocol import ActivationGradientProvider
from ._targets import Target

__all__ = ["REACH", "choose_layer"]

#: The share of a layer's positions that must receive a gradient for it to be chosen.
REACH = 0.5
#: How many candidates one capture takes at a time.
_CHUNK = 8


def _reach(provider: ActivationGradientProvider, gradient: object, info: LayerInfo,
           table: LayerTable) -> float:  # fmt: skip
    """The share of ``info``'s positions where the gradient is not zero in every channel (of
    any of the target's scores, where it has several)."""
    xp = array_namespace(gradient)
    if gradient.ndim == len(info.shape) + 1:  # type: ignore[attr-defined]
        gradient = xp.sum(xp.abs(gradient), axis=1)  # (N, K, ...) -> (N, ...)
    grid = to_channels_first(gradient, info.layout, table.input_size)  # type: ignore[arg-type]
    touched = xp.astype(xp.sum(xp.abs(grid), axis=1) > 0, xp.float32)
    return float(provider.to_numpy(xp.mean(touched)))


class _Reach:
    """How far the score reaches into each candidate, measured on demand, a chunk at a time."""

    def __init__(self, provider: ActivationGradientProvider, sample: ModelInputs,
                 target: Target, table: LayerTable) -> None:  # fmt: skip
        self.provider, self.sample, self.target, self.table = provider, sample, target, table
        self.shares: dict[str, float] = {}

    def measure(self, infos: list[LayerInfo]) -> None:
        wanted = [info for info in infos if info.name not in self.shares]
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            try:
                captured = self.provider.capture(
                    self.sample, [c.name for c in chunk], self.target, gradients=True
                )
                pairs = list(zip(chunk, captured.gradients or (), strict=True))
            except LayerError:  # one of them is off the path to the score: one at a time
                pairs = []
                for info in chunk:
                    try:
                        one = self.provider.capture(self.sample, [info.name], self.target,
                                                    gradients=True)  # fmt: skip
                    except LayerError:
                        self.shares[info.name] = 0.0
                        continue
                    pairs.append((info, (one.gradients or (None,))[0]))
            for info, gradient in pairs:
                self.shares[info.name] = (
                    0.0 if gradient is None else _reach(self.provider, gradient, info, self.table)
                )

    def reaches(self, info: LayerInfo) -> bool:
        self.measure([info])
        return self.shares[info.name] >= REACH


def _enclosing_block(name: str, table: LayerTable) -> str | None:
    """The nearest proper ancestor of ``name`` that is one block of a sequence (``layers.11``
    beside ``layers.10``, ``Block_11`` beside ``Block_10``), if any."""
    parts = re.split(r"([./])", name)  # keeps the separators
    for end in range(len(parts) - 2, 0, -2):
        ancestor = "".join(parts[:end])
        numbered = re.fullmatch(r"(.*?)(\d+)", ancestor)
        if numbered is None:
            continue
        stem = re.escape(numbered.group(1))
        if any(re.fullmatch(stem + r"\d+", row.name) and row.name != ancestor for row in table):
            return ancestor
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
    reach = _Reach(provider, sample, target.take(np.zeros(1, np.int64)), table)
    try:
        for end in range(len(candidates), 0, -_CHUNK):
            chunk = candidates[max(0, end - _CHUNK) : end]
            reach.measure(chunk)
            reached = [info for info in chunk if reach.reaches(info)]
            if reached:
                return _within_block(reached[-1], candidates, table, reach).name
    except TargetError:  # a target that cannot score one sample alone
        pass
    return candidates[-1].name


def _within_block(
    last: LayerInfo, candidates: list[LayerInfo], table: LayerTable, reach: _Reach
) -> LayerInfo:
    """``last``, or, where it lies inside a numbered block whose output the score does not
    reach, the block's first layer that the score reaches."""
    block = _enclosing_block(last.name, table)
    if block is None or block not in table or reach.reaches(table[block]):
        return last
    inside = [info for info in candidates if re.match(re.escape(block) + r"[./]", info.name)]
    reach.measure(inside)
    return next(info for info in inside if reach.reaches(info))
