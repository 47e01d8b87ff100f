"""The gradient-weighted family: maps built from activations ``A`` and gradients ``G = dS/dA``.

Shapes: ``A`` and ``G`` are ``(N, C, H, W)``; maps are ``(N, H, W)``. ``S`` is the target
score of each sample (by default the pre-softmax logit of its top-1 class).
"""

from __future__ import annotations

from typing import Any, Literal

from array_api_compat import array_namespace

from . import _ops
from ._base import CamMethod, ChannelWeightedMethod
from ._errors import InputError
from ._protocol import Capture

__all__ = ["GradCAM", "GradCAMElementWise", "GradCAMPlusPlus", "HiResCAM", "LayerCAM", "XGradCAM"]

Array = Any
GradCAMPlusPlusVariant = Literal["paper", "author-code"]


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

    def channel_weights(self, activations: Array, gradients: Array, capture: Capture) -> Array:
        return _ops.spatial_mean(gradients)


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

    Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep
    Convolutional Networks", WACV 2018, eqs. 9 and 19.
    """

    name = "gradcam++"
    paper = "Chattopadhay et al., WACV 2018, arXiv:1710.11063"
    variants: tuple[str, ...] = ("paper", "author-code")

    def __init__(self, *args: Any, variant: GradCAMPlusPlusVariant = "paper", **kwargs: Any):
        if variant not in self.variants:
            raise InputError(
                f"variant={variant!r} is not a Grad-CAM++ variant; use one of {self.variants}"
            )
        self.variant = variant
        super().__init__(*args, **kwargs)

    def _method_options(self) -> tuple[str]:
        return (self.variant,)

    def channel_weights(self, activations: Array, gradients: Array, capture: Capture) -> Array:
        squared = gradients * gradients
        denominator = 2 * squared + _ops.spatial_sum(activations) * squared * gradients
        alpha = _nonzero_divide(squared, denominator)
        if self.variant == "author-code":
            alpha = _nonzero_divide(alpha, _ops.spatial_sum(alpha))
        xp = array_namespace(alpha)
        return xp.sum(alpha * _ops.relu(gradients), axis=(2, 3))


class XGradCAM(ChannelWeightedMethod):
    """XGrad-CAM: gradients averaged with the activations' own spatial distribution as weights.

    ``w[n, c] = sum_ij (A[n, c, i, j] / sum_ab A[n, c, a, b]) * G[n, c, i, j]`` (0 for a channel
    whose activations sum to 0), ``M = ReLU(sum_c w[n, c] * A[n, c])``.

    Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
    BMVC 2020, eq. 13.
    """

    name = "xgradcam"
    paper = "Fu et al., BMVC 2020, arXiv:2008.02312"

    def channel_weights(self, activations: Array, gradients: Array, capture: Capture) -> Array:
        xp = array_namespace(activations, gradients)
        weighted = xp.sum(activations * gradients, axis=(2, 3))
        return _nonzero_divide(weighted, xp.sum(activations, axis=(2, 3)))


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

    def layer_map(self, activations: Array, gradients: Array, capture: Capture) -> Array:
        return array_namespace(activations).sum(gradients * activations, axis=1)


class GradCAMElementWise(CamMethod):
    """Grad-CAM element-wise: the ReLU moves inside the channel sum of HiResCAM.

    ``M[n] = sum_c ReLU(G[n, c] * A[n, c])`` (the outer ReLU of the pipeline then changes
    nothing). From the pytorch-grad-cam library (Gildenblat et al., 2021), which has no paper.
    """

    name = "gradcam-elementwise"
    paper = "Gildenblat et al., pytorch-grad-cam (2021), no paper"

    def layer_map(self, activations: Array, gradients: Array, capture: Capture) -> Array:
        return array_namespace(activations).sum(_ops.relu(gradients * activations), axis=1)


class LayerCAM(CamMethod):
    """LayerCAM: each activation weighted by its own positive gradient.

    ``M[n] = ReLU(sum_c ReLU(G[n, c]) * A[n, c])``. Fine-grained on shallow layers, where
    Grad-CAM's averaged weights blur.

    Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
    IEEE TIP 30 (2021), eqs. 5-6.
    """

    name = "layercam"
    paper = "Jiang et al., IEEE TIP 2021, doi:10.1109/TIP.2021.3089943"

    def layer_map(self, activations: Array, gradients: Array, capture: Capture) -> Array:
        return array_namespace(activations).sum(_ops.relu(gradients) * activations, axis=1)
