"""camkit: class activation maps, the same on PyTorch, TensorFlow/Keras and JAX.

>>> import camkit
>>> explanation = camkit.explain(model, images, method="gradcam")   # doctest: +SKIP
>>> explanation.cams.shape                                          # doctest: +SKIP
(N, H, W)

The core imports no framework: backends are plugins found through the ``camkit`` entry-point
group and imported only when a model of theirs arrives. :mod:`camkit.provider` is the toolkit
for writing one.
"""

from . import metrics, provider, targets
from ._activation import CAM, EigenCAM, EigenGradCAM
from ._api import explain, layers, methods
from ._backprop import FullGrad, GuidedBackprop, GuidedGradCAM
from ._base import CamMethod, ChannelWeightedMethod, Explanation
from ._compare import Agreement, compare
from ._errors import (
    BackendError,
    CamkitError,
    CapabilityError,
    InputError,
    LayerError,
    ModelError,
    TargetError,
)
from ._evaluate import evaluate
from ._evaluation import Evaluation, read_evaluation
from ._gradient import (
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
)
from ._inputs import ModelInputs
from ._layout import LayerInfo, LayerTable, Layout
from ._overlay import COLORMAPS, image_grid, overlay, read_image, save_image
from ._perturbation import ISCAM, SSCAM, AblationCAM, FasterScoreCAM, ScoreCAM
from ._protocol import (
    BIAS_GRADIENTS,
    CLASSIFIER_WEIGHTS,
    FORWARD_FROM_LAYER,
    FORWARD_SCORES,
    FUSED_PIPELINE,
    INPUT_GRADIENTS,
    PARAMETER_RANDOMIZATION,
    ActivationGradientProvider,
    Batch,
    Capture,
    Precision,
)
from ._ray import RayEvaluator
from ._registry import (
    Backend,
    BackendInfo,
    backends,
    hookimpl,
    module_available,
    register_backend,
)
from ._report import report
from ._save import Result, save
from ._smoothing import Augmentations
from ._study import Build, Study, run_study

__version__ = "0.1.0"

__all__ = [
    "BIAS_GRADIENTS",
    "CAM",
    "CLASSIFIER_WEIGHTS",
    "COLORMAPS",
    "FORWARD_FROM_LAYER",
    "FORWARD_SCORES",
    "FUSED_PIPELINE",
    "INPUT_GRADIENTS",
    "ISCAM",
    "PARAMETER_RANDOMIZATION",
    "SSCAM",
    "AblationCAM",
    "ActivationGradientProvider",
    "Agreement",
    "Augmentations",
    "Backend",
    "BackendError",
    "BackendInfo",
    "Batch",
    "Build",
    "CamMethod",
    "CamkitError",
    "CapabilityError",
    "Capture",
    "ChannelWeightedMethod",
    "EigenCAM",
    "EigenGradCAM",
    "Evaluation",
    "Explanation",
    "FasterScoreCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputError",
    "LayerCAM",
    "LayerError",
    "LayerInfo",
    "LayerTable",
    "Layout",
    "ModelError",
    "ModelInputs",
    "Precision",
    "RayEvaluator",
    "Result",
    "ScoreCAM",
    "SmoothGradCAMPlusPlus",
    "Study",
    "TargetError",
    "XGradCAM",
    "backends",
    "compare",
    "evaluate",
    "explain",
    "hookimpl",
    "image_grid",
    "layers",
    "methods",
    "metrics",
    "module_available",
    "overlay",
    "provider",
    "read_evaluation",
    "read_image",
    "register_backend",
    "report",
    "run_study",
    "save",
    "save_image",
    "targets",
]
