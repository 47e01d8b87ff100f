"""``camkit.explain`` and the method table."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from ._activation import CAM, EigenCAM, EigenGradCAM
from ._backprop import FullGrad, GuidedBackprop, GuidedGradCAM
from ._base import CamMethod, Explanation, LayerLike, OutputSize
from ._errors import InputError, closest_names
from ._gradient import (
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
)
from ._inputs import as_model_inputs
from ._layout import LayerTable
from ._perturbation import ISCAM, SSCAM, AblationCAM, FasterScoreCAM, ScoreCAM
from ._registry import provider_for
from ._scoring import TargetLike

__all__ = ["explain", "layers", "methods"]

_METHODS: dict[str, type[CamMethod]] = {
    cls.name: cls
    for cls in (
        CAM,
        GradCAM,
        GradCAMPlusPlus,
        XGradCAM,
        HiResCAM,
        GradCAMElementWise,
        LayerCAM,
        EigenCAM,
        EigenGradCAM,
        SmoothGradCAMPlusPlus,
        ScoreCAM,
        SSCAM,
        ISCAM,
        FasterScoreCAM,
        AblationCAM,
        GuidedBackprop,
        GuidedGradCAM,
        FullGrad,
    )
}


def methods() -> dict[str, type[CamMethod]]:
    """The methods by the names :func:`explain` accepts, each class documenting its paper."""
    return dict(_METHODS)


@functools.cache
def _option_names(cls: type[CamMethod]) -> frozenset[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and issubclass(klass, CamMethod):
            parameters = inspect.signature(klass.__init__).parameters.values()
            names |= {p.name for p in parameters if p.kind is p.KEYWORD_ONLY}
    return frozenset(names)


def explain(
    model: Any,
    inputs: Any,
    method: str = "gradcam",
    layer: LayerLike | Sequence[LayerLike] | None = None,
    target: TargetLike = None,
    backend: str | None = None,
    size: OutputSize = "input",
    *,
    image: int | str | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> Explanation:
    """Explain a batch in one call.

    Args:
        model: a model of any framework that a backend handles (a ``torch.nn.Module``, ...).
        inputs: a batch as the model takes it (``(N, 3, H, W)`` images for torch; also
            ``(N, C, L)`` signals and ``(N, C, D, H, W)`` volumes), or, for a model with
            several inputs, a tuple of positional inputs or a dict of keyword inputs.
        method: one of :func:`methods`: ``"cam"``, ``"gradcam"``, ``"gradcam++"``,
            ``"xgradcam"``, ``"hirescam"``, ``"gradcam-elementwise"``, ``"layercam"``,
            ``"eigencam"``, ``"eigengradcam"``, ``"smoothgradcam++"``, ``"scorecam"``,
            ``"sscam"``, ``"iscam"``, ``"fasterscorecam"``, ``"ablationcam"``,
            ``"guided-backprop"``, ``"guided-gradcam"``, ``"fullgrad"``.
        layer: a layer name, layer object, or a sequence of them; ``None`` picks the last layer
            with a spatial output (the result's ``layers`` says which).
        target: ``None`` (each sample's top-1 class), a class index, one index per sample, a
            :mod:`camkit.targets` object, or a callable ``outputs -> (N,)`` in the model's
            framework.
        backend: a backend name to override automatic selection.
        size: ``"input"``, ``"layer"`` or ``(H, W)`` (one size per spatial axis): the maps'
            size.
        image: with several inputs, the position or key of the one the maps are over
            (default: the first array with spatial axes).
        forward_kwargs: more keyword arguments for the model's forward pass (masks, text).
        **options: the method's options: ``relu``, ``normalize``, ``fusion``, ``layout``,
            ``grid``, ``prefix_tokens``, ``nonfinite``, ``eigen_smooth``, ``aug_smooth``,
            ``on_device``, ``dtype`` (see :class:`CamMethod`), and per method ``variant``
            (Grad-CAM++, Eigen-CAM, EigenGrad-CAM), ``masks`` (the Score-CAM family),
            ``classifier`` (CAM), ``samples``/``noise``/``seed`` (the smoothed methods),
            ``batch_size``, ``precision``, ``progress`` and ``weighting`` (the perturbation family),
            ``channels`` (Faster Score-CAM), ``upsample`` (Guided Grad-CAM), ``variant``
            (FullGrad).

    Returns:
        an :class:`Explanation` whose ``cams`` are numpy float32 ``(N, H, W)`` (``(N, L)``,
        ``(N, D, H, W)`` for signals and volumes); with ``on_device=True`` the framework's
        arrays on the model's device, with ``dtype=`` float16 or uint8.
    """
    cls = _METHODS.get(method) if isinstance(method, str) else None
    if cls is None:
        known = closest_names(method, _METHODS) if isinstance(method, str) else (
            f"use one of {', '.join(map(repr, _METHODS))}"
        )  # fmt: skip
        raise InputError(f"method={method!r} is not a camkit method; {known}")
    valid = _option_names(cls) - {"backend", "size"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise InputError(
            f"{unknown[0]!r} is not an option of method {method!r}; "
            f"{closest_names(unknown[0], sorted(valid))}"
        )
    with cls(model, layer, backend=backend, size=size, **options) as explainer:
        return explainer(inputs, target, image=image, forward_kwargs=forward_kwargs)


def layers(
    model: Any,
    inputs: Any,
    *,
    backend: str | None = None,
    image: int | str | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> LayerTable:
    """Every layer a forward pass on ``inputs`` runs, in order: its name, its output's shape,
    its layout (as camkit infers it; ``None`` where it cannot tell) and the spatial shape of its
    map over the inputs (``None`` for a layer that cannot be explained). ``print()`` it for a
    table. Arguments as for :func:`explain`.

    >>> print(camkit.layers(model, images))                          # doctest: +SKIP
    layer       output shape         layout           map
    conv1       (8, 64, 112, 112)    channels_first   112x112
    ...
    """
    _, provider = provider_for(model, backend)
    try:
        return provider.layers(as_model_inputs(inputs, forward_kwargs, image))
    finally:
        provider.close()
