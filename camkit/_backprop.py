"""The input-space family: maps from gradients that reach the image itself.

Guided Backpropagation and Guided Grad-CAM explain every input channel: their
:attr:`~camkit.Explanation.attributions` are ``(N, C, *S)``, channels-first whatever the
model's layout, and their ``cams`` the magnitude over channels, ``max_c |attributions[n, c]|``
(the reduction of Simonyan et al.'s saliency maps, arXiv:1312.6034, section 3.1), resized to
``size`` and normalized as ``normalize`` says. FullGrad sums post-processed gradient terms into
``cams`` directly. ``S`` is the target score of each sample; ``x`` the image channels-first.

The backends compute the gradients (capabilities ``input_gradients`` and ``bias_gradients``);
what the gradients become is here, in the backend's namespace.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from array_api_compat import array_namespace

from . import _checks, _ops
from ._base import CamMethod, Explanation, _virtual_samples
from ._errors import CapabilityError, InputError, LayerError
from ._gradient import GradCAM
from ._inputs import ModelInputs
from ._protocol import (
    BIAS_GRADIENTS,
    FORWARD_SCORES,
    INPUT_GRADIENTS,
    Batch,
    BiasKind,
    Capture,
    capability,
)
from ._targets import ScoredTarget, Target

__all__ = ["FullGrad", "GuidedBackprop", "GuidedGradCAM"]

Array = Any
Upsample = Literal["linear", "nearest"]
FullGradVariant = Literal["paper", "pytorch-grad-cam"]


@dataclass(frozen=True)
class _InputCapture(Capture):
    """A capture whose maps came from input-space gradients: with the per-channel
    ``attributions`` (``None`` for FullGrad) and the ``layers`` the explanation reports."""

    attributions: Array | None = None
    layers: tuple[str, ...] = ()


class _InputSpaceMethod(CamMethod):
    """What the input-space methods share: options that do not apply are refused, and the
    explanation carries the attributions and the layers the gradients came from."""

    relu_by_default = False  # every map here is non-negative already

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _checks.one_of(self.normalize, "normalize", ("minmax", "none"))
        if self.aug_smooth is not None:
            raise InputError(
                f"aug_smooth does not apply to method {self.name!r}, whose gradients reach the "
                "image itself; pass aug_smooth=False"
            )

    def _final_maps(self, maps: Array, size: tuple[int, ...]) -> Array:
        """``(N, *S)`` or ``(N, K, *S)`` raw maps at the input's size, resized to ``size=`` and
        normalized as ``normalize=`` says."""
        xp = array_namespace(maps)
        lead = tuple(maps.shape[: maps.ndim - len(size)])
        flat = xp.reshape(maps, (-1, *size))
        flat = _ops.resize_linear(flat, self._output_size(size, [flat]))
        if self.normalize == "minmax":
            flat = self._rescale(flat)
        return xp.reshape(flat, (*lead, *flat.shape[1:]))

    def _rescale(self, maps: Array) -> Array:
        """Each map (over every axis after the first) rescaled to ``[0, 1]``."""
        return _ops.normalize_minmax(maps)

    def _attributed(
        self, attributions: Array, scored: ScoredTarget, size: tuple[int, ...],
        layers: tuple[str, ...],
    ) -> tuple[Array, Capture]:  # fmt: skip
        """The maps of per-channel ``attributions`` ``(N, [K,] C, *S)``: ``max_c |a|``."""
        xp = array_namespace(attributions)
        channels = attributions.ndim - len(size) - 1
        magnitude = xp.max(xp.abs(attributions), axis=channels)
        capture = _InputCapture(
            (), None, None, scored.scores, scored.indices, attributions=attributions,
            layers=layers,
        )  # fmt: skip
        return self._final_maps(magnitude, size), capture

    def _explanation(
        self, cams: Array, capture: Capture, *, attributions: Array | None = None,
        layers: tuple[str, ...] | None = None,
    ) -> Explanation:  # fmt: skip
        if not isinstance(capture, _InputCapture):
            return super()._explanation(cams, capture)
        return super()._explanation(
            cams, capture, attributions=capture.attributions, layers=capture.layers
        )


def _checked(array: Array, scores: Array, rank: int, what: str) -> Array:
    """``array`` if it is ``(N, C, *s)`` for ``(N,)`` scores, ``(N, K, C, *s)`` for ``(N, K)``
    scores, with ``rank`` spatial axes; else a ``CapabilityError`` (a backend that returns one
    gradient for several scores per sample)."""
    lead = tuple(scores.shape)
    if tuple(array.shape[: len(lead)]) != lead or array.ndim != len(lead) + 1 + rank:
        raise CapabilityError(
            f"the backend returned {what} of shape {tuple(array.shape)} for scores of shape "
            f"{lead}; it must return one per score, of shape {lead} + (C, *spatial) (see "
            "camkit.provider.InputGradients); explain one target at a time with this backend"
        )
    return array


def _guided_gradients(
    method: CamMethod, inputs: ModelInputs, target: Target
) -> tuple[Array, ScoredTarget]:
    """Guided Backpropagation's ``dS/dx`` ``(N, [K,] C, *S)`` and the scores."""
    gradients, scored = capability(method.provider, INPUT_GRADIENTS).input_gradients(
        inputs, target, rule="guided"
    )
    rank = len(method.provider.input_size(inputs))
    return _checked(gradients, scored.scores, rank, "input gradients"), scored


class GuidedBackprop(_InputSpaceMethod):
    """Guided Backpropagation: the image's gradient with every ReLU passing back only positive
    gradients, and only where its input was positive.

    For a ReLU ``y = max(x, 0)`` the backward pass becomes ``dL/dx = [x > 0] * ReLU(dL/dy)``
    (the standard one is ``[x > 0] * dL/dy``); ``attributions = dS/dx`` under that rule,
    ``(N, C, *S)``, and ``cams[n] = max_c |attributions[n, c]|``. The model's ReLUs are
    guided only while camkit runs it (a ReLU6, leaky or other variant is left as it is). It
    explains the image and takes no ``layer``; ``fusion``, ``layout``, ``grid`` and
    ``prefix_tokens`` do not apply, and ``aug_smooth`` and ``eigen_smooth`` are refused.

    Springenberg et al., "Striving for Simplicity: The All Convolutional Net", ICLR workshop
    2015 (the rule of guided backpropagation).
    """

    name = "guided-backprop"
    paper = "Springenberg et al., ICLR-W 2015, arXiv:1412.6806"
    requires = frozenset({INPUT_GRADIENTS})
    explains_layer = False

    def __init__(self, model: Any, layer: None = None, **kwargs: Any) -> None:
        if layer is not None:
            raise InputError(
                f"layer={layer!r}: guided-backprop explains the image through the whole model "
                "and takes no layer; pass layer=None"
            )
        super().__init__(model, None, **kwargs)
        if self.eigen_smooth:
            raise InputError(
                "eigen_smooth does not apply to guided-backprop, which has no layer's channels "
                "to project; pass eigen_smooth=False"
            )

    def _maps(self, model_inputs: ModelInputs, chosen: Target) -> tuple[Array, Capture]:
        gradients, scored = _guided_gradients(self, model_inputs, chosen)
        return self._attributed(gradients, scored, self.provider.input_size(model_inputs), ())

    def layer_map(
        self, activations: Array, gradients: Array | None, capture: Capture, batch: Batch
    ) -> Array:
        raise NotImplementedError("guided-backprop has no layer maps")  # never called


class GuidedGradCAM(_InputSpaceMethod, GradCAM):
    """Guided Grad-CAM: Guided Backpropagation weighted pixel by pixel by Grad-CAM's map.

    ``attributions[n, c] = G_guided[n, c] * U(ReLU(L[n]))``, where ``G_guided`` is Guided
    Backpropagation's ``dS/dx`` (see :class:`GuidedBackprop`), ``L = sum_k w_k A_k`` Grad-CAM's
    map of ``layer`` (``w_k`` the spatial mean of ``dS/dA_k``; several layers are fused with
    ``fusion``), left unnormalized, and ``U`` its upsampling to the image; ``relu=False``
    drops the ReLU. ``cams[n] = max_c |attributions[n, c]|``.

    ``upsample`` selects a reading of ``U``:

    - ``"linear"`` (default): bilinear (trilinear for volumes, half-pixel centres), as the
      paper upsamples Grad-CAM;
    - ``"nearest"``: nearest neighbour, captum's ``GuidedGradCam`` default (its
      ``interpolate_mode``); with it, ``attributions`` equal captum's.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017, section 3.1.
    """

    name = "guided-gradcam"
    paper = "Selvaraju et al., ICCV 2017, arXiv:1610.02391"
    relu_by_default = True  # Grad-CAM's ReLU
    requires = frozenset({INPUT_GRADIENTS})
    upsamplings: tuple[str, ...] = ("linear", "nearest")

    def __init__(self, *args: Any, upsample: Upsample = "linear", **kwargs: Any) -> None:
        self.upsample: Upsample = _checks.one_of(upsample, "upsample", self.upsamplings)
        super().__init__(*args, **kwargs)

    def _method_options(self) -> tuple[str]:
        return (self.upsample,)

    def _pipeline(self, capture: Capture, batch: Batch) -> Array:
        """Grad-CAM's fused map, ReLU'd if ``relu`` and upsampled to the image, unnormalized:
        ``(N, *S)``, or ``(N, K, *S)`` for ``K`` scores per sample."""
        columns = int(capture.scores.shape[1]) if capture.scores.ndim == 2 else None
        if columns is not None:
            capture = _virtual_samples(capture, columns)
            batch = dataclasses.replace(batch, columns=columns)
        resize = _ops.resize_nearest if self.upsample == "nearest" else _ops.resize_linear
        maps = [
            resize(_ops.relu(m) if self.relu else m, batch.size)
            for m in self._layer_maps(capture, batch)
        ]
        fused = _ops.fuse(maps, self.fusion)
        if columns is not None:
            fused = array_namespace(fused).reshape(fused, (-1, columns, *fused.shape[1:]))
        return fused

    def _maps(self, model_inputs: ModelInputs, chosen: Target) -> tuple[Array, Capture]:
        gradcam, capture = super()._maps(model_inputs, chosen)
        guided, _ = _guided_gradients(self, model_inputs, chosen)
        size = self.provider.input_size(model_inputs)
        xp = array_namespace(gradcam)
        weights = xp.reshape(gradcam, (*gradcam.shape[: gradcam.ndim - len(size)], 1, *size))
        scored = ScoredTarget(capture.scores, capture.indices)
        return self._attributed(guided * weights, scored, size, tuple(self.layers or ()))


class FullGrad(_InputSpaceMethod):
    """FullGrad: the image's gradient and every layer's bias-gradients, summed as maps.

    With ``x`` the image, ``z_l`` the output of layer ``l`` before any activation and ``b_l``
    its bias (for batch normalization in inference the effective bias
    ``beta - mean * gamma / sqrt(var + eps)``), the full-gradient terms are
    ``x * dS/dx`` ``(C, *S)`` and ``f_l = b_l[c] * dS/dz_l`` ``(C_l, *S_l)`` per layer, and

    ``M[n] = sum_c psi(x * dS/dx)[n, c] + sum_l sum_c psi(f_l)[n, c]``,

    ``psi`` = ``|.|``, then each channel's map rescaled to ``[0, 1]`` by its own min and max,
    then upsampled (bilinear, half-pixel centres) to the image. The layers are every one with
    a bias over the image's spatial axes (convolutions, batch normalizations, linear layers
    on feature maps); ``layer`` restricts them to some (``fusion``, ``grid`` and
    ``prefix_tokens`` do not apply; ``aug_smooth`` and ``eigen_smooth`` are refused).
    ``variant`` selects a reading:

    - ``"paper"`` (default): as above, the paper's aggregation (the rescaling exact, a constant
      map rescaled to 0);
    - ``"pytorch-grad-cam"``: pytorch-grad-cam's ``FullGrad``: convolutions and batch
      normalizations only, and every rescaling (the final one too) divides by
      ``max - min + 1e-7``.

    Srinivas & Fleuret, "Full-Gradient Representation for Neural-Network Visualization",
    NeurIPS 2019 (the full-gradient decomposition and its FullGrad aggregation, whose
    post-processing ``psi`` is bilinear upsampling of rescaled absolute values).
    """

    name = "fullgrad"
    paper = "Srinivas & Fleuret, NeurIPS 2019, arXiv:1905.00780"
    requires = frozenset({BIAS_GRADIENTS, FORWARD_SCORES})  # core_inputs: the image x
    explains_layer = False
    variants: tuple[str, ...] = ("paper", "pytorch-grad-cam")
    #: pytorch-grad-cam's rescaling, ``(M - min M) / (max M - min M + 1e-7)``.
    PYTORCH_GRAD_CAM_EPSILON = 1e-7

    def __init__(self, *args: Any, variant: FullGradVariant = "paper", **kwargs: Any) -> None:
        self.variant: FullGradVariant = _checks.one_of(variant, "variant", self.variants)
        super().__init__(*args, **kwargs)
        if self.eigen_smooth:
            raise InputError(
                "eigen_smooth does not apply to fullgrad, whose map sums every layer's "
                "channels; pass eigen_smooth=False"
            )

    def _method_options(self) -> tuple[str]:
        return (self.variant,)

    def _rescale(self, maps: Array) -> Array:
        if self.variant == "paper":
            return _ops.normalize_minmax(maps)
        xp = array_namespace(maps)
        axes = tuple(range(1, maps.ndim))
        shifted = maps - xp.min(maps, axis=axes, keepdims=True)
        return shifted / (xp.max(shifted, axis=axes, keepdims=True) + self.PYTORCH_GRAD_CAM_EPSILON)

    def _bias_layers(self, inputs: ModelInputs) -> tuple[str, ...]:
        """The layers whose bias terms enter the map, in the model's order."""
        found: dict[str, BiasKind] = capability(self.provider, BIAS_GRADIENTS).bias_layers(inputs)
        if self.variant == "pytorch-grad-cam":
            found = {name: kind for name, kind in found.items() if kind != "linear"}
        if self.layers is None:
            return tuple(found)
        outside = [name for name in self.layers if name not in found]
        if outside:
            raise LayerError(
                f"layer {outside[0]!r} has no bias over the image's spatial axes for fullgrad "
                f"(variant={self.variant!r}); layers with one: {list(found) or 'none'}; pass "
                "some of them, or layer=None for all"
            )
        return tuple(name for name in found if name in self.layers)

    def _term_map(self, term: Array, size: tuple[int, ...]) -> Array:
        """``(M, C, *s) -> (M, *S)``: ``sum_c`` of each channel's ``|term|`` rescaled to
        ``[0, 1]`` and upsampled to the image's ``size``."""
        xp = array_namespace(term)
        count, channels = term.shape[0], term.shape[1]
        per_channel = xp.reshape(xp.abs(term), (count * channels, *term.shape[2:]))
        upsampled = _ops.resize_linear(self._rescale(per_channel), size)
        return xp.sum(xp.reshape(upsampled, (count, channels, *size)), axis=1)

    def _maps(self, model_inputs: ModelInputs, chosen: Target) -> tuple[Array, Capture]:
        layers = self._bias_layers(model_inputs)
        full = capability(self.provider, BIAS_GRADIENTS).bias_gradients(
            model_inputs, layers, chosen
        )
        x = capability(self.provider, FORWARD_SCORES).core_inputs(model_inputs)
        xp = array_namespace(x)
        size = self.provider.input_size(model_inputs)
        scores = full.scored.scores
        columns = int(scores.shape[1]) if scores.ndim == 2 else None
        gradients = _checked(full.input_gradients, scores, len(size), "input gradients")
        input_term = gradients * (x if columns is None else x[:, None, ...])
        terms: Sequence[Array] = (
            input_term,
            *(_checked(term, scores, len(size), "bias terms") for term in full.bias_terms),
        )
        if columns is not None:  # (N, K, C, ...) -> N * K virtual samples
            terms = [xp.reshape(t, (-1, *t.shape[2:])) for t in terms]
        maps = self._term_map(terms[0], size)
        for term in terms[1:]:
            maps = maps + self._term_map(term, size)
        if columns is not None:
            maps = xp.reshape(maps, (-1, columns, *size))
        capture = _InputCapture((), None, None, scores, full.scored.indices, layers=layers)
        return self._final_maps(maps, size), capture

    def layer_map(
        self, activations: Array, gradients: Array | None, capture: Capture, batch: Batch
    ) -> Array:
        raise NotImplementedError("fullgrad has no layer maps")  # never called
