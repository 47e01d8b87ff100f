"""The toolkit for writing a camkit backend: everything a provider needs, in public names.

A backend is a plugin (entry-point group ``camkit``) whose ``camkit_backends()`` hook returns
:class:`Backend` records; each record names a factory ``provider(model)`` of an object that
satisfies :class:`ActivationGradientProvider` and, optionally, the capability protocols it
declares. camkit's own PyTorch, TensorFlow and JAX backends are written from these names alone.

>>> from camkit import provider as kit
>>> name = kit.find_layer("conv2", layers, "MyNet")           # doctest: +SKIP
>>> args, kwargs = inputs.call_arguments()                     # doctest: +SKIP
>>> with kit.model_lock(model), kit.running_model("MyNet", shape, "float32"):
...     outputs = model(*args, **kwargs)                       # doctest: +SKIP
>>> scored = kit.score_outputs(target, outputs, inputs.count)  # doctest: +SKIP

What it holds:

- the contract: :class:`ActivationGradientProvider`, :class:`Capture`, :class:`ScoredTarget`
  and one protocol per optional capability, reached with :func:`capability`;
- the model's inputs: :class:`ModelInputs` (one array or several, and which is the image),
  :func:`check_image` and :func:`image_size`;
- targets: :func:`score_outputs` (the one place a target meets a model's outputs),
  :func:`check_outputs`, and :func:`trace_target` for compiled captures;
- layers: :func:`find_layer` (closest-name errors), :class:`LayerTable` of every layer's
  output shape and :data:`Layout`, remembered per model by :func:`layer_table`;
- running the model: :func:`model_lock` (one thread at a time per model) and
  :func:`running_model` (a model's failure becomes a :class:`ModelError`);
- per-model state: :class:`ModelTable` (weak, by identity) and :class:`CompiledCache`;
- parameter randomization: :func:`forward_order`, :func:`parameter_seed` and
  :func:`rescaled_normal`;
- arrays: :func:`array_namespace`, :func:`device`, and :func:`register_namespace` for a
  framework without an Array API namespace.
"""

from ._errors import (
    BackendError,
    CamkitError,
    CapabilityError,
    InputError,
    LayerError,
    ModelError,
    TargetError,
    closest_names,
)
from ._inputs import ModelInputs
from ._layers import find_layer
from ._layout import LayerInfo, LayerTable, Layout, LayoutLike
from ._model_state import CompiledCache, ModelTable, layer_table, model_lock
from ._namespace import array_namespace, device, register_namespace
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
    BiasGradients,
    BiasKind,
    Capability,
    Capture,
    ClassifierWeights,
    ForwardFromLayer,
    ForwardScores,
    FullGradients,
    FusedPipeline,
    GradientRule,
    InputGradients,
    ParameterRandomization,
    Pipeline,
    Precision,
    capability,
)
from ._randomization import forward_order, parameter_seed, rescaled_normal
from ._registry import Backend, hookimpl, module_available
from ._running import check_image, image_size, running_model
from ._scoring import TracedTarget, check_outputs, score_outputs, trace_target
from ._targets import CallableTarget, ScoredTarget, Target

__all__ = [
    "BIAS_GRADIENTS",
    "CLASSIFIER_WEIGHTS",
    "FORWARD_FROM_LAYER",
    "FORWARD_SCORES",
    "FUSED_PIPELINE",
    "INPUT_GRADIENTS",
    "PARAMETER_RANDOMIZATION",
    "ActivationGradientProvider",
    "Backend",
    "BackendError",
    "Batch",
    "BiasGradients",
    "BiasKind",
    "CallableTarget",
    "CamkitError",
    "Capability",
    "CapabilityError",
    "Capture",
    "ClassifierWeights",
    "CompiledCache",
    "ForwardFromLayer",
    "ForwardScores",
    "FullGradients",
    "FusedPipeline",
    "GradientRule",
    "InputError",
    "InputGradients",
    "LayerError",
    "LayerInfo",
    "LayerTable",
    "Layout",
    "LayoutLike",
    "ModelError",
    "ModelInputs",
    "ModelTable",
    "ParameterRandomization",
    "Pipeline",
    "Precision",
    "ScoredTarget",
    "Target",
    "TargetError",
    "TracedTarget",
    "array_namespace",
    "capability",
    "check_image",
    "check_outputs",
    "closest_names",
    "device",
    "find_layer",
    "forward_order",
    "hookimpl",
    "image_size",
    "layer_table",
    "model_lock",
    "module_available",
    "parameter_seed",
    "register_namespace",
    "rescaled_normal",
    "running_model",
    "score_outputs",
    "trace_target",
]
