"""The contract between camkit's core and a framework backend, on one screen.

A backend provides, per model, an object satisfying :class:`ActivationGradientProvider` (the
required protocol). Optional capabilities are declared by name in its ``capabilities`` and
typed by one protocol each; the core reaches them only through :func:`capability`, so every
call it makes into a backend is type-checked.

=============================  ====================  ==============================================
capability                     protocol              needed by
=============================  ====================  ==============================================
:data:`CLASSIFIER_WEIGHTS`     ClassifierWeights     CAM
:data:`FUSED_PIPELINE`         FusedPipeline         compiling capture and map math together (JAX)
:data:`FORWARD_SCORES`         ForwardScores         Score-CAM family, Smooth Grad-CAM++, metrics
:data:`FORWARD_FROM_LAYER`     ForwardFromLayer      Ablation-CAM
:data:`INPUT_GRADIENTS`        InputGradients        Guided Backpropagation, Guided Grad-CAM
:data:`BIAS_GRADIENTS`         BiasGradients         FullGrad
=============================  ====================  ==============================================

The sanity checks of :mod:`camkit.metrics` need :data:`PARAMETER_RANDOMIZATION`
(:class:`ParameterRandomization`: randomized copies of the model).

A model's inputs reach a provider as a :class:`~camkit.provider.ModelInputs` (one array, or
several inputs with extra arguments, and which one is the image). Captured arrays cross this
boundary as the layer returns them (its first array where it returns a tuple), as float32, in
the backend's own namespace and on the model's device; the provider's :meth:`layers` table says
how each layer's output is laid out, and the core turns every layout into channels-first
``(N, C, *S)`` itself. The core never converts arrays to numpy before the final maps.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar, cast, runtime_checkable

import numpy as np

from ._errors import CapabilityError
from ._inputs import ModelInputs
from ._layout import LayerTable, LayoutLike
from ._targets import ScoredTarget, Target

__all__ = [
    "BIAS_GRADIENTS",
    "CLASSIFIER_WEIGHTS",
    "FORWARD_FROM_LAYER",
    "FORWARD_SCORES",
    "FUSED_PIPELINE",
    "INPUT_GRADIENTS",
    "PARAMETER_RANDOMIZATION",
    "ActivationGradientProvider",
    "Batch",
    "BiasGradients",
    "BiasKind",
    "Capability",
    "Capture",
    "ClassifierWeights",
    "ForwardFromLayer",
    "ForwardScores",
    "FullGradients",
    "FusedPipeline",
    "GradientRule",
    "InputGradients",
    "ParameterRandomization",
    "Precision",
    "capability",
]

#: An array of the provider's framework (numpy, torch.Tensor, jax.Array, ...).
Array = Any
#: The dtype of the forward passes of the perturbation methods and metrics.
Precision = Literal["float32", "bfloat16", "float16"]
#: How gradients pass back through the model's ReLUs: ``"standard"`` (the derivative,
#: ``[x > 0] * dL/dy``) or ``"guided"`` (Springenberg et al. 2015: ``[x > 0] * ReLU(dL/dy)``).
GradientRule = Literal["standard", "guided"]
#: What holds a layer's bias: a convolution, a linear layer, or a batch normalization (in
#: inference, the affine map ``gamma (z - mean) / sqrt(var + eps) + beta``).
BiasKind = Literal["convolution", "linear", "normalization"]


@dataclass(frozen=True)
class Capture:
    """What one instrumented forward (and backward) pass of a provider returns.

    ``activations[l]`` and ``gradients[l]`` belong to ``layers[l]`` of the request, each as
    the layer returns it (laid out as the provider's layer table says); ``gradients`` is
    ``None`` when none were asked for. ``outputs`` are the model's outputs as it returned them,
    ``scores`` ``(N,)`` float32 the target's score per sample and ``indices`` ``(N,)`` the
    output index each score was read from (``None`` for a callable target).

    A target with ``K`` scores per sample gives ``scores`` and ``indices`` ``(N, K)`` and
    gradients ``(N, K, ...)``, the layer's shape with a target axis after the batch axis:
    ``gradients[l][:, k] = dS[:, k] / dA``, all from the one forward pass.
    """

    activations: tuple[Array, ...]
    gradients: tuple[Array, ...] | None
    outputs: Any
    scores: Array
    indices: Array | None


@dataclass(frozen=True)
class Batch:
    """What the core knows of the batch being explained, beside the capture.

    ``size`` is the image's spatial size (``(L,)``, ``(H, W)`` or ``(D, H, W)``) and
    ``layouts`` the layout each captured layer is read with. For methods that run further
    forward passes (``needs_inputs``), ``image`` is the image channels-first ``(N, C, *S)``
    from the provider's ``core_inputs``, ``inputs`` the model's inputs and ``target`` the
    target being explained; otherwise they are ``None``. ``columns`` is ``K`` while the
    core explains a target with ``K`` scores per sample: the capture a method sees then holds
    ``N * K`` virtual samples, sample ``n`` repeated once per score (``n * K + k``), and a
    method that runs forward passes runs them on the ``N`` real ones (every ``K``-th row).
    """

    size: tuple[int, ...]
    layouts: tuple[LayoutLike, ...] = ()
    image: Array | None = None
    inputs: ModelInputs | None = None
    target: Target | None = None
    columns: int | None = None


@runtime_checkable
class ActivationGradientProvider(Protocol):
    """What a backend provides for one model (required).

    A backend registers a factory ``provider(model) -> ActivationGradientProvider`` with
    :func:`camkit.register_backend` or through the ``camkit`` entry-point group. Every method
    that runs the model leaves it as it found it, on every exit path, and holds the model's
    lock (:func:`camkit.provider.model_lock`) while it runs.
    """

    #: Optional capabilities this provider offers, such as :data:`CLASSIFIER_WEIGHTS`.
    capabilities: frozenset[str]

    def layer_names(self) -> Sequence[str]:
        """Every layer name that ``resolve_layer`` accepts, in the model's order."""
        ...

    def resolve_layer(self, layer: object) -> str:
        """The canonical name of ``layer`` (a name or a layer object); raise ``LayerError``."""
        ...

    def layers(self, inputs: ModelInputs) -> LayerTable:
        """Every layer the forward pass on these inputs runs, with its output shape and
        layout, in order (remembered per model and input shapes: ``layer_table``)."""
        ...

    def capture(
        self, inputs: ModelInputs, layers: Sequence[str], target: Target, *, gradients: bool
    ) -> Capture:
        """Run the model once, capturing the layers' activations and, if asked, the gradients
        of the target's summed score with respect to them (and to nothing else); for ``(N, K)``
        scores, of each column's sum, from one forward pass (see :class:`Capture`)."""
        ...

    def input_size(self, inputs: ModelInputs) -> tuple[int, ...]:
        """The image's spatial size: ``(L,)``, ``(H, W)`` or ``(D, H, W)``."""
        ...

    def to_numpy(self, array: Array) -> np.ndarray:
        """Copy an array of this backend to host memory as numpy."""
        ...

    def close(self) -> None:
        """Release what the provider holds (compiled functions, caches)."""
        ...


P = TypeVar("P")


class Capability(str, Generic[P]):
    """The name of an optional capability, typed by its protocol ``P``: providers list such
    names in ``capabilities``, and :func:`capability` returns the provider typed as ``P``."""

    protocol: type

    def __new__(cls, name: str, protocol: type) -> Capability[P]:
        created = super().__new__(cls, name)
        created.protocol = protocol
        return created


class ClassifierWeights(Protocol):
    def classifier_weights(self, classifier: object | None = None) -> Array:
        """The final linear layer's ``(K, C)`` weights (``classifier`` names another)."""
        ...


#: A method's pure map pipeline ``(capture, image size) -> maps (N, *S)``.
Pipeline = Callable[[Capture, tuple[int, ...]], Array]


class FusedPipeline(Protocol):
    def run_pipeline(
        self,
        inputs: ModelInputs,
        layers: Sequence[str],
        target: Target,
        *,
        gradients: bool,
        pipeline: Pipeline,
        key: Hashable,
    ) -> tuple[Array, Capture]:
        """Compile the capture together with ``pipeline`` (cached by ``key``) and return the
        maps and the capture; the capture then needs only ``outputs``, ``scores`` and
        ``indices``."""
        ...


class ForwardScores(Protocol):
    def core_inputs(self, inputs: ModelInputs) -> Array:
        """The validated image as a channels-first ``(N, C, *S)`` float32 array."""
        ...

    def native_image(self, x: Array) -> Any:
        """A channels-first image (as from ``core_inputs``) back in the model's own layout."""
        ...

    def forward_scores(
        self, inputs: ModelInputs, target: Target, *, precision: Precision
    ) -> ScoredTarget:
        """Run the model, with no capture, on ``inputs`` and score the target."""
        ...


class ForwardFromLayer(Protocol):
    def forward_from_layer(
        self, inputs: ModelInputs, layer: str, activations: Array, target: Target,
        *, precision: Precision,
    ) -> ScoredTarget:  # fmt: skip
        """Scores of one sample's ``inputs`` with ``layer``'s output replaced by each of
        ``activations`` (``B`` rows, laid out as the layer returns them) in turn: ``B``
        scores."""
        ...


class InputGradients(Protocol):
    def input_gradients(
        self, inputs: ModelInputs, target: Target, *, rule: GradientRule
    ) -> tuple[Array, ScoredTarget]:
        """``dS/dx``: the gradient of the target's summed score with respect to the image,
        channels-first ``(N, C, *S)`` float32 (``(N, K, C, *S)`` for ``(N, K)`` scores, one
        gradient per column), with every ReLU passing gradients back by ``rule``, and the
        scores. The ReLUs are guided only while the call runs: the model keeps no trace of
        it. A model whose ReLUs the backend cannot reach raises a ``CapabilityError``."""
        ...


@dataclass(frozen=True)
class FullGradients:
    """The full-gradient decomposition of one batch (Srinivas & Fleuret, NeurIPS 2019):
    ``input_gradients`` ``dS/dx`` of the image, channels-first ``(N, C, *S)``; per layer ``l``
    asked for, ``bias_terms[l] = b_l[c] * dS/dz_l[n, c, ...]`` channels-first
    ``(N, C_l, *S_l)``, where ``z_l`` is the layer's output before any activation and ``b_l``
    its (effective) bias; ``scored`` the target's scores. For ``(N, K)`` scores every array
    has a target axis after the batch axis."""

    input_gradients: Array
    bias_terms: tuple[Array, ...]
    scored: ScoredTarget


class BiasGradients(Protocol):
    def bias_layers(self, inputs: ModelInputs) -> dict[str, BiasKind]:
        """Every layer with a bias over the image's spatial axes (its output a feature map
        laid out channels-first or channels-last), in the model's order, with what holds the
        bias."""
        ...

    def bias_gradients(
        self, inputs: ModelInputs, layers: Sequence[str], target: Target
    ) -> FullGradients:
        """The image's gradient and the bias terms of ``layers`` (from :meth:`bias_layers`),
        from one forward and backward pass with standard gradients."""
        ...


class ParameterRandomization(Protocol):
    def parameter_layers(self, inputs: ModelInputs) -> Sequence[str]:
        """The layers that own parameters (learned weights, not running statistics), in the
        order the forward pass on ``inputs`` reaches them (``""`` for the model's own
        parameters); layers the pass never runs are left out."""
        ...

    def randomized(self, layers: Sequence[str], seed: int) -> object:
        """A new model of the framework, independent of the provider's (which is left exactly
        as it was), with the parameters of ``layers`` (from :meth:`parameter_layers`)
        re-initialized: by the layer's own initializer where the framework keeps one, else
        seeded normal draws at the original's scale. A layer's new values depend only on
        ``seed`` and the layer (:func:`~camkit.provider.parameter_seed`), so every step of a
        cascade gives a layer the same values. A backend that cannot build one raises a
        ``CapabilityError`` saying why."""
        ...


#: Capability: ``classifier_weights()`` (CAM).
CLASSIFIER_WEIGHTS: Capability[ClassifierWeights] = Capability(
    "classifier_weights", ClassifierWeights
)
#: Capability: ``run_pipeline(...)`` compiles capture and map pipeline together.
FUSED_PIPELINE: Capability[FusedPipeline] = Capability("fused_pipeline", FusedPipeline)
#: Capability: ``core_inputs``, ``native_inputs`` and ``forward_scores``.
FORWARD_SCORES: Capability[ForwardScores] = Capability("forward_scores", ForwardScores)
#: Capability: ``forward_from_layer`` (Ablation-CAM).
FORWARD_FROM_LAYER: Capability[ForwardFromLayer] = Capability(
    "forward_from_layer", ForwardFromLayer
)
#: Capability: ``input_gradients`` (Guided Backpropagation, Guided Grad-CAM).
INPUT_GRADIENTS: Capability[InputGradients] = Capability("input_gradients", InputGradients)
#: Capability: ``bias_layers`` and ``bias_gradients`` (FullGrad).
BIAS_GRADIENTS: Capability[BiasGradients] = Capability("bias_gradients", BiasGradients)
#: Capability: ``parameter_layers`` and ``randomized`` (the parameter-randomization check).
PARAMETER_RANDOMIZATION: Capability[ParameterRandomization] = Capability(
    "parameter_randomization", ParameterRandomization
)


def capability(provider: ActivationGradientProvider, wanted: Capability[P]) -> P:
    """``provider`` typed as the protocol of ``wanted``, if it declares that capability and
    has the protocol's methods; else a :class:`~camkit.CapabilityError` naming what is
    missing."""
    if wanted not in provider.capabilities:
        raise CapabilityError(
            f"the {type(provider).__name__} provider does not offer the capability "
            f"{str(wanted)!r}; it offers {sorted(provider.capabilities)}"
        )
    methods = [name for name in vars(wanted.protocol) if not name.startswith("_")]
    missing = [name for name in methods if not callable(getattr(provider, name, None))]
    if missing:
        raise CapabilityError(
            f"the {type(provider).__name__} provider declares the capability {str(wanted)!r} "
            f"but has no {missing[0]}(); a backend must implement what it declares"
        )
    return cast(P, provider)
