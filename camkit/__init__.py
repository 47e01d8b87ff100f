"""camkit: class activation maps, the same on PyTorch, TensorFlow/Keras and JAX.

>>> import camkit
>>> explanation = camkit.explain(model, images, method="gradcam")   # doctest: +SKIP
>>> explanation.cams.shape                                          # doctest: +SKIP
(N, H, W)

The core imports no framework: backends are plugins found through the ``camkit`` entry-point
group and imported only when a model of theirs arrives.
"""

from . import targets
from ._activation import CAM, EigenCAM, EigenGradCAM
from ._api import explain, methods
from ._base import CamMethod, ChannelWeightedMethod, Explanation
from ._errors import (
    BackendError,
    CamkitError,
    CapabilityError,
    InputError,
    LayerError,
    TargetError,
)
from ._gradient import (
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from ._overlay import COLORMAPS, image_grid, overlay
from ._protocol import CLASSIFIER_WEIGHTS, FUSED_PIPELINE, ActivationGradientProvider, Capture
from ._registry import (
    Backend,
    BackendInfo,
    backends,
    hookimpl,
    module_available,
    register_backend,
)

__version__ = "0.1.0"

__all__ = [
    "CAM",
    "CLASSIFIER_WEIGHTS",
    "COLORMAPS",
    "FUSED_PIPELINE",
    "ActivationGradientProvider",
    "Backend",
    "BackendError",
    "BackendInfo",
    "CamMethod",
    "CamkitError",
    "CapabilityError",
    "Capture",
    "ChannelWeightedMethod",
    "EigenCAM",
    "EigenGradCAM",
    "Explanation",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "InputError",
    "LayerCAM",
    "LayerError",
    "TargetError",
    "XGradCAM",
    "backends",
    "explain",
    "hookimpl",
    "image_grid",
    "methods",
    "module_available",
    "overlay",
    "register_backend",
    "targets",
]
