"""The activation-based family: CAM's classifier weights and the principal-component methods.

CAM and Eigen-CAM need no gradients; EigenGrad-CAM applies Eigen-CAM's projection to ``G * A``.
Shapes: activations ``A`` are ``(N, C, H, W)``; maps are ``(N, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from array_api_compat import array_namespace

from . import _checks, _ops
from ._base import CamMethod, ChannelWeightedMethod
from ._errors import InputError, LayerError, TargetError
from ._inputs import ModelInputs
from ._multi import AllClasses, Classes, TopK
from ._protocol import CLASSIFIER_WEIGHTS, Batch, Capture, capability
from ._targets import ClassTarget, SigmoidTarget, SoftmaxTarget, Target

__all__ = ["CAM", "EigenCAM", "EigenGradCAM"]

Array = Any
#: Targets whose every score is of a class (never ``-1``): CAM need not read their indices.
_CLASS_TARGETS = (ClassTarget, SoftmaxTarget, SigmoidTarget, TopK, Classes, AllClasses)
EigenVariant = Literal["paper", "centered"]


class CAM(ChannelWeightedMethod):
    """CAM: channels weighted by the classifier's weights for the target class.

    For a model ending in global average pooling and a linear classifier with weights
    ``W`` ``(K, C)``, ``M[n] = sum_c W[k_n, c] * A[n, c]``, where ``A`` is the pooled layer's
    input and ``k_n`` the target class. The paper takes no ReLU (``relu=None`` keeps it off).

    ``classifier`` names the linear layer; ``None`` takes the model's last one. The layer
    explained must be the one whose pooled output feeds it.

    Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, eq. 2.
    """

    name = "cam"
    paper = "Zhou et al., CVPR 2016, arXiv:1512.04150"
    needs_gradients = False
    relu_by_default = False
    requires = frozenset({CLASSIFIER_WEIGHTS})
    fusable = False  # the classifier's weights are read from the model at every call

    def __init__(self, *args: Any, classifier: object | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.classifier = classifier
        self._classifier_weights()  # fail now, not at the first call, if there is none

    def _classifier_weights(self) -> Array:
        # Read at every call: the model's weights may have changed since construction.
        return capability(self.provider, CLASSIFIER_WEIGHTS).classifier_weights(self.classifier)

    def _capture(self, inputs: ModelInputs, layers: Sequence[str], target: Target) -> Capture:
        capture = super()._capture(inputs, layers, target)
        if capture.indices is None:
            raise TargetError(
                "CAM weights channels by one class's classifier weights, so target= must be a "
                "class (None, an index, or one index per sample), not a callable"
            )
        # Only targets that may leave a score without a class (boxes) are read on the host.
        if (
            not isinstance(target, _CLASS_TARGETS)
            and (self.provider.to_numpy(capture.indices) < 0).any()
        ):
            raise TargetError(
                "CAM weights channels by a class's classifier weights, but some of the target's "
                "scores have no class (a box no prediction matched); use a gradient method for "
                "such targets"
            )
        return capture

    def channel_weights(
        self, activations: Array, gradients: None, capture: Capture, batch: Batch
    ) -> Array:
        weights = self._classifier_weights()
        if weights.shape[1] != activations.shape[1]:
            raise LayerError(
                f"CAM: the classifier takes {weights.shape[1]} features but layer "
                f"{self.layers!r} has {activations.shape[1]} channels; explain the layer whose "
                "globally pooled output feeds the classifier"
            )
        return array_namespace(weights).take(weights, capture.indices, axis=0)


class EigenCAM(CamMethod):
    """Eigen-CAM: the activations projected on their first principal direction.

    With ``X[n]`` the ``(HW, C)`` matrix of sample ``n``'s activations and ``v_1`` its first
    right singular vector, ``M[n] = X[n] @ v_1`` as an ``(H, W)`` map, signed so that its sum is
    non-negative (a singular vector's sign is arbitrary). Class-agnostic: it ignores ``target``
    except to report scores. No ReLU in the paper.

    ``variant`` selects a published reading:

    - ``"paper"`` (default): ``X[n]`` as it is.
    - ``"centered"`` (pytorch-grad-cam): ``X[n]`` minus each channel's mean over the positions,
      ``M[n] = (X[n] - mean_p X[n]) @ v_1``, signed to correlate non-negatively with the
      channel sum (a centred projection sums to 0); pytorch-grad-cam keeps the SVD's sign, so
      its map may be this one negated.

    Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components", IJCNN 2020.
    """

    name = "eigencam"
    paper = "Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299"
    needs_gradients = False
    relu_by_default = False
    variants: tuple[str, ...] = ("paper", "centered")

    def __init__(self, *args: Any, variant: EigenVariant = "paper", **kwargs: Any) -> None:
        self.variant = _checks.one_of(variant, "variant", self.variants)
        super().__init__(*args, **kwargs)
        if self.eigen_smooth:
            raise InputError(
                f"eigen_smooth=True does not apply to {self.name!r}, whose map already is a "
                "first principal projection; pass variant='centered' for the mean-centred one"
            )

    def _method_options(self) -> tuple[str]:
        return (self.variant,)

    def _projected(self, x: Array) -> Array:
        return _ops.first_principal_projection(x, centered=self.variant == "centered")

    def layer_map(
        self, activations: Array, gradients: None, capture: Capture, batch: Batch
    ) -> Array:
        return self._projected(activations)


class EigenGradCAM(EigenCAM):
    """EigenGrad-CAM: Eigen-CAM on the gradient-weighted activations ``G * A``.

    ``M[n] = X[n] @ v_1`` with ``X[n]`` the ``(HW, C)`` matrix of ``G[n] * A[n]``, signed as in
    Eigen-CAM; class-discriminative through ``G``. ``variant="centered"`` centres ``X[n]`` first,
    as pytorch-grad-cam does (see :class:`EigenCAM`). From the pytorch-grad-cam library
    (Gildenblat et al., 2021), which has no paper.
    """

    name = "eigengradcam"
    paper = "Gildenblat et al., pytorch-grad-cam (2021), no paper"
    needs_gradients = True

    def layer_map(
        self, activations: Array, gradients: Array, capture: Capture, batch: Batch
    ) -> Array:
        return self._projected(gradients * activations)
