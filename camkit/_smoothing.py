"""Test-time augmentation smoothing: the maps of flipped, rescaled and brightened copies of the
inputs, each brought back onto the original's pixels, averaged.

With views ``t_1..t_V`` (each a flip, an intensity factor and a spatial scale) and ``M(X)`` a
method's map of ``X`` at the output size,

``M_aug(X) = (1 / V) sum_v t_v^-1(M(t_v(X)))``,

where ``t_v^-1`` undoes the flip and resizes the map back (an intensity factor moves no pixel).
Every view explains the same target: a class target is pinned to the classes chosen on the
unaugmented inputs. The mean is not renormalized (pytorch-grad-cam's ``aug_smooth``, whose
default views are ``Augmentations()``). Shapes: the image ``X`` channels-first ``(N, C, *S)``;
maps ``(N, *S)`` or ``(N, K, *S)``.
"""

from __future__ import annotations

import copy
import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from array_api_compat import array_namespace

from . import _ops
from ._boxes import BoxTarget
from ._errors import InputError, TargetError
from ._inputs import ModelInputs
from ._protocol import FORWARD_SCORES, Capture, capability
from ._scoring import rows_target
from ._targets import Target

if TYPE_CHECKING:
    from ._base import CamMethod

__all__ = ["Augmentations", "as_augmentations", "smoothed_maps"]

Array = Any
Flip = Literal["none", "horizontal", "vertical"]
#: The spatial axis (from the end) each flip reverses: the width, the height.
_FLIP_AXES: dict[str, int | None] = {"none": None, "horizontal": -1, "vertical": -2}


@dataclass(frozen=True)
class Augmentations:
    """The views ``aug_smooth`` explains: every combination of a flip, a factor and a scale.

    - ``flips``: ``"none"``, ``"horizontal"`` (the last spatial axis reversed: the width of
      images and volumes, the time of signals), ``"vertical"`` (the one before it);
    - ``factors``: intensity multipliers, ``X * f`` (ttach's ``Multiply``);
    - ``scales``: spatial factors: ``X`` resized (linear) to ``round(s * S)`` along every
      spatial axis, its map resized back. A model that takes one input size only needs
      ``scales=(1.0,)``.

    The defaults are pytorch-grad-cam's: horizontal flip or not, times factors 0.9, 1, 1.1.
    """

    flips: tuple[Flip, ...] = ("none", "horizontal")
    factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        for name, wanted in (
            ("flips", "some of 'none', 'horizontal', 'vertical'"),
            ("factors", "positive numbers"),
            ("scales", "positive numbers"),
        ):
            values = getattr(self, name)
            if isinstance(values, str) or not isinstance(values, Sequence) or not values:
                raise InputError(
                    f"Augmentations.{name}={values!r} is not valid; give a non-empty tuple of "
                    f"{wanted}"
                )
            object.__setattr__(self, name, tuple(values))
        bad_flips = [flip for flip in self.flips if flip not in get_args(Flip)]
        if bad_flips:
            raise InputError(
                f"Augmentations.flips holds {bad_flips[0]!r}; use 'none', 'horizontal' or "
                "'vertical'"
            )
        for name in ("factors", "scales"):
            bad = [
                value for value in getattr(self, name)
                if not isinstance(value, numbers.Real) or isinstance(value, bool)
                or not math.isfinite(value) or value <= 0
            ]  # fmt: skip
            if bad:
                raise InputError(
                    f"Augmentations.{name} holds {bad[0]!r}; use positive finite numbers"
                )

    def views(self) -> list[tuple[Flip, float, float]]:
        """Every ``(flip, factor, scale)``, in the order flips, factors, scales."""
        return list(itertools.product(self.flips, self.factors, self.scales))

    @property
    def moves_pixels(self) -> bool:
        """Whether a view flips or rescales the image (a box target could not follow it)."""
        return any(flip != "none" for flip in self.flips) or any(s != 1 for s in self.scales)


def as_augmentations(value: object) -> Augmentations | None:
    """``aug_smooth=``: ``False`` (off), ``True`` (the default views) or ``Augmentations``."""
    if isinstance(value, Augmentations):
        return value
    if value is True:
        return Augmentations()
    if value is False or value is None:
        return None
    raise InputError(
        f"aug_smooth={value!r} is not valid; use True (flips and factors 0.9, 1, 1.1), False, "
        "or camkit.Augmentations(flips=..., factors=..., scales=...)"
    )


def _flip(x: Array, flip: Flip) -> Array:
    axis = _FLIP_AXES[flip]
    return x if axis is None else array_namespace(x).flip(x, axis=axis)


def smoothed_maps(
    method: CamMethod, inputs: ModelInputs, target: Target, views: Augmentations
) -> tuple[Array, Capture]:
    """The method's maps averaged over ``views`` of ``inputs`` (see the module), and the
    capture of the unaugmented inputs, whose scores and targets the explanation reports."""
    if views.moves_pixels and isinstance(target, BoxTarget):
        raise TargetError(
            "aug_smooth flips or rescales the image, which BoxTarget cannot follow (its boxes "
            "are in the unaugmented image's coordinates); use "
            "Augmentations(flips=('none',), scales=(1.0,)) or aug_smooth=False"
        )
    forward = capability(method.provider, FORWARD_SCORES)
    cams, capture = method._maps(inputs, target)
    spatial = len(method.provider.input_size(inputs))
    size = tuple(int(s) for s in cams.shape[cams.ndim - spatial :])
    if spatial < 2 and "vertical" in views.flips:
        raise InputError(
            "Augmentations.flips holds 'vertical', but the inputs have one spatial axis; use "
            "'none' and 'horizontal'"
        )
    pinned = rows_target(target, capture.indices, np.arange(inputs.count), probability=False)
    at_size = copy.copy(method)  # every view's maps at the unaugmented maps' size
    at_size.size = size
    image = forward.core_inputs(inputs)
    total: Array = None
    for flip, factor, scale in views.views():
        if (flip, factor, scale) == ("none", 1.0, 1.0):
            view_maps = cams
        else:
            x = image
            if scale != 1:
                scaled = [max(1, round(s * scale)) for s in image.shape[2:]]
                x = _ops.resize_linear(x, scaled)
            x = _flip(x, flip) * factor
            view_maps, _ = at_size._maps(inputs.with_image(forward.native_image(x)), pinned)
            view_maps = _flip(view_maps, flip)
        total = view_maps if total is None else total + view_maps
    return total / len(views.views()), capture
