"""The gradient-weighted family: maps built from activations ``A`` and gradients ``G = dS/dA``.

Shapes: ``A`` and ``G`` are ``(N, C, *S)`` (``(N, C, H, W)`` for images; one to three spatial
axes); maps are ``(N, *S)``; sums and means over ``ij`` run over every spatial axis. ``S`` is
the target score of each sample (by default the pre-softmax logit of its top-1 class).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
from array_api_compat import array_namespace, device

from . import _checks, _noise, _ops
from ._base import CamMethod, ChannelWeightedMethod
from ._inputs import ModelInputs
from ._protocol import FORWARD_SCORES, Batch, Capture, capability
from ._scoring import rows_target
from ._targets import Target

__all__ = [
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
]

Array = Any
GradCAMPlusPlusVariant = Literal["paper", "author-code", "pytorch-grad-cam"]


def _nonzero_divide(numerator: Array, denominator: Array) -> Array:
    """``numerator / denominator`` where the denominator is non-zero, and 0 elsewhere."""
    xp = array_namespace(numerator, denominator)
    nonzero = denominator != 0
    safe = xp.where(nonzero, denominator, xp.ones_like(denominator))
    return xp.where(nonzero, numerator / safe, xp.zeros_like(numerator / safe))


class GradCAM(ChannelWeightedMethod):
    """Grad-CAM: channels weighted by their average gradient.

    ``w[n, c] = (1 / HW) * sum_ij G[n, c, i, j]``, ``M = ReLU(sum_c w[n, c] * A[n, c])``.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017, eqs. 1-2.
    """

    name = "gradcam"
    paper = "Selvaraju et al., ICCV 2017, arXiv:1610.02391"

    def channel_weights(
        self, activations: Array, gradients: Array, capture: Capture, batch: Batch
    ) -> Array:
        return _ops.spatial_mean(gradients)


def _plus_plus_alpha(activations: Array, second: Array, third: Array) -> Array:
    """Grad-CAM++'s pixel weights ``second / (2 second + (sum_ab A) third)`` (0 where the
    denominator is), from the second and third powers of the gradients (or their means)."""
    return _nonzero_divide(second, 2 * second + _ops.spatial_sum(activations) * third)


class GradCAMPlusPlus(ChannelWeightedMethod):
    """Grad-CAM++: channels weighted by their positive gradients, each pixel by ``alpha``.

    With ``Y = exp(S)`` the paper's eq. 19 gives, per sample, channel and pixel,

    ``alpha[c, i, j] = G^2 / (2 G^2 + (sum_ab A[c, a, b]) * G^3)`` (0 where the denominator is),
    ``w[c] = sum_ij alpha[c, i, j] * ReLU(G[c, i, j])``, ``M = ReLU(sum_c w[c] * A[c])``.

    The paper's positive factor ``exp(S)`` on ``ReLU(dY/dA) = exp(S) ReLU(G)`` is left out: it
    scales each sample's map by a constant, which normalization removes, and it overflows
    float32 for logits above about 88.

    ``variant`` selects a published reading:

    - ``"paper"`` (default): eq. 19 as above.
    - ``"author-code"``: the authors' released code, also used by tf-keras-vis, which further
      divides ``alpha`` by its spatial sum, ``alpha / sum_ij alpha`` (where that sum is non-zero).
    - ``"pytorch-grad-cam"``: ``alpha = G^2 / (2 G^2 + (sum_ab A) G^3 + 1e-6)`` where ``G != 0``
      and 0 elsewhere: an epsilon in the denominator instead of skipping zero denominators.

    Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep
    Convolutional Networks", WACV 2018, eqs. 9 and 19.
    """

    name = "gradcam++"
    paper = "Chattopadhay et al., WACV 2018, arXiv:1710.11063"
    variants: tuple[str, ...] = get_args(GradCAMPlusPlusVariant)

    def __init__(self, *args: Any, variant: GradCAMPlusPlusVariant = "paper", **kwargs: Any):
        self.variant = _checks.one_of(variant, "variant", self.variants)
        super().__init__(*args, **kwargs)

    def _method_options(self) -> tuple[str]:
        return (self.variant,)

    def channel_weights(
        self, activations: Array, gradients: Array, capture: Capture, batch: Batch
    ) -> Array:
        squared = gradients * gradients
        if self.variant == "pytorch-grad-cam":
            xp = array_namespace(gradients)
            denominator = 2 * squared + _ops.spatial_sum(activations) * squared * gradients
            alpha = xp.where(gradients != 0, squared / (denominator + 1e-6), xp.zeros_like(squared))
        else:
            alpha = _plus_plus_alpha(activations, squared, squared * gradients)
        if self.variant == "author-code":
            alpha = _nonzero_divide(alpha, _ops.spatial_sum(alpha))
        xp = array_namespace(alpha)
        return xp.sum(alpha * _ops.relu(gradients), axis=_ops.spatial_axes(alpha))


class XGradCAM(ChannelWeightedMethod):
    """XGrad-CAM: gradients averaged with the activations' own spatial distribution as weights.

    ``w[n, c] = sum_ij (A[n, c, i, j] / sum_ab A[n, c, a, b]) * G[n, c, i, j]`` (0 for a channel
    whose activations sum to 0), ``M = ReLU(sum_c w[n, c] * A[n, c])``.

    Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
    BMVC 2020, eq. 13.
    """

    name = "xgradcam"
    paper = "Fu et al., BMVC 2020, arXiv:2008.02312"

    def channel_weights(
        self, activations: Array, gradients: Array, capture: Capture, batch: Batch
    ) -> Array:
        xp = array_namespace(activations, gradients)
        axes = _ops.spatial_axes(activations)
        weighted = xp.sum(activations * gradients, axis=axes)
        return _nonzero_divide(weighted, xp.sum(activations, axis=axes))


class HiResCAM(CamMethod):
    """HiResCAM: gradients multiplied into the activations element by element, then summed.

    ``M[n] = ReLU(sum_c G[n, c] * A[n, c])``. Unlike Grad-CAM it keeps the gradients' spatial
    detail, and for a model that ends in a linear layer on flattened features it equals that
    layer's exact contribution to the score.

    Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", arXiv:2011.08891 (2020), eq. 4.
    """

    name = "hirescam"
    paper = "Draelos & Carin, 2020, arXiv:2011.08891"

    def layer_map(
        self, activations: Array, gradients: Array, capture: Capture, batch: Batch
    ) -> Array:
        return self._channel_sum(gradients * activations)


class GradCAMElementWise(CamMethod):
    """Grad-CAM element-wise: the ReLU moves inside the channel sum of HiResCAM.

    ``M[n] = sum_c ReLU(G[n, c] * A[n, c])`` (the outer ReLU of the pipeline then changes
    nothing). From the pytorch-grad-cam library (Gildenblat et al., 2021), which has no paper.
    """

    name = "gradcam-elementwise"
    paper = "Gildenblat et al., pytorch-grad-cam (2021), no paper"

    def layer_map(
        self, activations: Array, gradients: Array, capture: Capture, batch: Batch
    ) -> Array:
        return self._channel_sum(_ops.relu(gradients * activations))


class LayerCAM(CamMethod):
    """LayerCAM: each activation weighted by its own positive gradient.

    ``M[n] = ReLU(sum_c ReLU(G[n, c]) * A[n, c])``. Fine-grained on shallow layers, where
    Grad-CAM's averaged weights blur.

    Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
    IEEE TIP 30 (2021), eqs. 5-6.
    """

    name = "layercam"
    paper = "Jiang et al., IEEE TIP 2021, doi:10.1109/TIP.2021.3089943"

    def layer_map(
        self, activations: Array, gradients: Array, capture: Capture, batch: Batch
    ) -> Array:
        return self._channel_sum(_ops.relu(gradients) * activations)


class SmoothGradCAMPlusPlus(ChannelWeightedMethod):
    """Smooth Grad-CAM++: Grad-CAM++ with the gradients' powers averaged over noisy inputs.

    With ``G_i = dS/dA`` at the input ``X + e_i``, ``e_i ~ N(0, sigma^2)`` per pixel,
    ``i = 1..samples``, and ``D_p = (1 / samples) sum_i G_i^p``:

    ``alpha = D_2 / (2 D_2 + (sum_ab A[a, b]) D_3)`` (0 where the denominator is),
    ``w[c] = sum_ij alpha[c, i, j] * ReLU(D_1[c, i, j])``, ``M = ReLU(sum_c w[c] * A[c])``,

    where ``A`` are the activations of the unperturbed input, whose target class every noisy
    pass keeps. ``sigma = noise * (max X[n] - min X[n])``, SmoothGrad's relative noise level.
    ``seed`` makes the noise reproducible; draw ``i`` is the same for every sample of a batch,
    so an image's map does not depend on the batch it is in. (torchcam 0.5 instead sums
    ``D_3 * A`` per pixel and weights with the last sample's gradients in place of ``D_1``.)

    Omeiza et al., "Smooth Grad-CAM++: An Enhanced Inference Level Visualization Technique for
    Deep Convolutional Neural Network Models", arXiv:1908.01224 (2019), eqs. 6-8; noise as in
    Smilkov et al., "SmoothGrad", arXiv:1706.03825.
    """

    name = "smoothgradcam++"
    paper = "Omeiza et al., 2019, arXiv:1908.01224"
    requires = frozenset({FORWARD_SCORES})  # core_inputs and native_inputs
    fusable = False  # several captures per call; the averaged powers of G travel in
    # ``capture.gradients`` as [D_1 of each layer..., D_2 ..., D_3 ...]

    def __init__(
        self, *args: Any, samples: int = 10, noise: float = 0.15, seed: int | None = None,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        self.samples = _checks.positive_int(samples, "samples")
        self.noise = _checks.number(noise, "noise", minimum=0)
        self.seed = _checks.seed(seed)
        super().__init__(*args, **kwargs)

    def _capture(self, inputs: ModelInputs, layers: Sequence[str], target: Target) -> Capture:
        provider = capability(self.provider, FORWARD_SCORES)
        clean = self.provider.capture(inputs, layers, target, gradients=False)
        x = provider.core_inputs(inputs)
        xp = array_namespace(x)
        axes = tuple(range(1, x.ndim))
        spread = xp.max(x, axis=axes, keepdims=True) - xp.min(x, axis=axes, keepdims=True)
        pinned = rows_target(target, clean.indices, np.arange(x.shape[0]), probability=False)
        seed = _noise.run_seed(self.seed)
        sums: list[list[Array]] | None = None
        for repeat in range(self.samples):
            # one draw per repeat, shared by every sample: a sample's noise never depends on
            # the batch it came in
            draw = _noise.normal(seed, (repeat,), tuple(x.shape[1:]))
            noise = xp.asarray(draw, device=device(x))[None, ...]
            noisy = inputs.with_image(provider.native_image(x + noise * (self.noise * spread)))
            gradients = self.provider.capture(noisy, layers, pinned, gradients=True).gradients
            powers = [[g, g * g, g * g * g] for g in gradients or ()]
            sums = powers if sums is None else [
                [total + power for total, power in zip(layer_sums, layer_powers, strict=True)]
                for layer_sums, layer_powers in zip(sums, powers, strict=True)
            ]  # fmt: skip
        averages = [[total / self.samples for total in layer_sums] for layer_sums in sums or []]
        stacked = tuple(layer[power] for power in range(3) for layer in averages)
        return dataclasses.replace(clean, gradients=stacked)

    def _layer_maps(self, capture: Capture, batch: Batch) -> list[Array]:
        """Each layer's map, with its three averaged powers of ``G`` read in the layer's
        layout and stacked on the channel axis: ``(N, 3C, *S) = [D_1, D_2, D_3]``."""
        count = len(capture.activations)
        powers = capture.gradients or ()
        maps = []
        for index, (layer, layout, activations) in enumerate(
            zip(self._layers or (), batch.layouts, capture.activations, strict=True)
        ):
            grid = self._as_grid(activations, layer, layout, batch)
            stacked = array_namespace(grid).concat(
                [self._as_grid(powers[index + p * count], layer, layout, batch) for p in range(3)],
                axis=1,
            )
            maps.append(self.layer_map(grid, stacked, capture, batch))
        return maps

    def channel_weights(
        self, activations: Array, gradients: Array, capture: Capture, batch: Batch
    ) -> Array:
        xp = array_namespace(activations, gradients)
        channels = activations.shape[1]
        first, second, third = (gradients[:, i * channels : (i + 1) * channels] for i in range(3))
        alpha = _plus_plus_alpha(activations, second, third)
        return xp.sum(alpha * _ops.relu(first), axis=_ops.spatial_axes(activations))
