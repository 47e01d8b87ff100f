"""The contract between camkit's core and a framework backend.

Arrays cross this boundary channels-first, ``(N, C, H, W)`` for convolutional layers or
``(N, T, C)`` for token layers, as float32, in the backend's own namespace and on the model's
device. The core never converts them to numpy before the final maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ._targets import Target

__all__ = [
    "CLASSIFIER_WEIGHTS",
    "FORWARD_FROM_LAYER",
    "FORWARD_SCORES",
    "FUSED_PIPELINE",
    "ActivationGradientProvider",
    "Capture",
    "Precision",
]

Array = Any
#: The dtype of the forward passes of the perturbation methods and metrics.
Precision = Literal["float32", "bfloat16", "float16"]

#: Capability: ``classifier_weights()`` returns the final linear layer's ``(K, C)`` weights (CAM).
CLASSIFIER_WEIGHTS = "classifier_weights"
#: Capability: ``run_pipeline(inputs, layers, target, gradients=, pipeline=, key=)`` compiles
#: the capture together with the method's pure map pipeline ``pipeline(capture, input_size)``
#: (cached by ``key``) and returns ``(cams, capture)``; the capture then needs only ``scores``
#: and ``indices``.
FUSED_PIPELINE = "fused_pipeline"
#: Capability: ``core_inputs(inputs)`` gives the inputs as a channels-first ``(N, C, H, W)``
#: float32 array of the provider's namespace, ``native_inputs(x)`` turns such an array back
#: into inputs that ``capture`` takes, and ``forward_scores(x, target, precision=)`` runs the
#: model, with no capture, on such an array and returns the target's ``ScoredTarget``
#: (``scores`` ``(N,)``). The Score-CAM family, Smooth Grad-CAM++ and :mod:`camkit.metrics`
#: need it.
FORWARD_SCORES = "forward_scores"
#: Capability: ``forward_from_layer(x, layer, activations, target, precision=)`` runs the
#: model on one sample ``x`` ``(1, C, H, W)`` (as from ``core_inputs``) with ``layer``'s output
#: replaced by each of ``activations`` ``(B, C', h, w)`` in turn, and returns the target's
#: ``ScoredTarget`` for the ``B`` runs. Ablation-CAM needs it.
FORWARD_FROM_LAYER = "forward_from_layer"


@dataclass(frozen=True)
class Capture:
    """What one instrumented forward (and backward) pass returns.

    ``activations[l]`` and ``gradients[l]`` belong to ``layers[l]`` of the request, each
    ``(N, C, H, W)`` or ``(N, T, C)``; ``gradients`` is ``None`` when none were asked for.
    ``outputs`` are the model's outputs, ``scores`` ``(N,)`` the target's score per sample and
    ``indices`` ``(N,)`` the output index each score was read from (``None`` for a callable).

    The core fills in ``inputs`` (channels-first, from the provider's ``core_inputs``) and
    ``target`` for the methods that run further forward passes; a provider leaves them ``None``.
    """

    activations: tuple[Array, ...]
    gradients: tuple[Array, ...] | None
    outputs: Array
    scores: Array
    indices: Array | None
    inputs: Array | None = None
    target: Target | None = None


@runtime_checkable
class ActivationGradientProvider(Protocol):
    """What a backend provides for one model.

    A backend registers a factory ``provider(model) -> ActivationGradientProvider`` with
    :func:`camkit.register_backend` or through the ``camkit`` entry-point group.
    """

    #: Optional capabilities this provider offers, such as :data:`CLASSIFIER_WEIGHTS`.
    capabilities: frozenset[str]

    def layer_names(self) -> Sequence[str]:
        """Every layer name that ``resolve_layer`` accepts, in the model's order."""
        ...

    def resolve_layer(self, layer: object) -> str:
        """The canonical name of ``layer`` (a name or a layer object); raise ``LayerError``."""
        ...

    def default_layer(self, inputs: Any) -> str:
        """The last layer with a spatial output for these inputs; raise ``LayerError``."""
        ...

    def capture(
        self, inputs: Any, layers: Sequence[str], target: Target, *, gradients: bool
    ) -> Capture:
        """Run the model once, capturing the layers' activations and, if asked, the gradients
        of the target's summed score with respect to them (and to nothing else).

        On every exit path the model is left as it was found.
        """
        ...

    def input_size(self, inputs: Any) -> tuple[int, int]:
        """The inputs' spatial size ``(H, W)``."""
        ...

    def to_numpy(self, array: Array) -> np.ndarray:
        """Copy an array of this backend to host memory as numpy."""
        ...

    def close(self) -> None:
        """Release what the provider holds (compiled functions, caches)."""
        ...
