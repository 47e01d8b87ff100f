"""What the two Keras providers (:mod:`camkit_tf` on TensorFlow, :mod:`camkit_keras` on JAX and
PyTorch) do alike, whatever runs the model: the model and its lock, a :class:`Substituted`
model's scope, layers by path, how Keras takes the inputs, the protocol's thin methods, and
Ablation-CAM's replacement passes that fall back to repeated samples.

A provider subclasses :class:`KerasProviderBase` and supplies the passes themselves:
``layers``, ``capture``, ``_scored_with`` (a forward pass with a layer's output replaced),
``_backward`` (gradients to the image and to layers' pre-activations) and
``classifier_weights``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from camkit import provider as kit
from camkit.provider import (
    BiasKind,
    CapabilityError,
    FullGradients,
    GradientRule,
    InputError,
    LayerTable,
    ModelError,
    ModelInputs,
    Precision,
    ScoredTarget,
    Target,
)

from . import _randomize
from ._layers import bias_layers, final_softmax_layer, walk_layers
from ._substituted import Substituted

__all__ = ["KerasProviderBase"]

#: What the frameworks say when a one-sample tensor meets a batch of ablated copies.
_BATCH_MISMATCH = re.compile(r"shape|dimension|size", re.IGNORECASE)


class KerasProviderBase:
    """The Keras half of a Keras provider; ``name`` is the backend's name, for messages."""

    name = "keras"

    def __init__(self, model: Any, keras: Any) -> None:
        # a Substituted model runs the user's model, under its lock, in a StatelessScope; what
        # is traced or learned of it is kept apart from the model's own (``self._owner``)
        self._substituted = model if isinstance(model, Substituted) else None
        self._owner: object = model
        model = model.model if isinstance(model, Substituted) else model
        if not isinstance(model, keras.layers.Layer):
            raise InputError(
                f"the {self.name} backend needs a Keras model, got {type(model).__qualname__}"
            )
        self.keras = keras
        self.model = model
        self._name = repr(model.name)
        self._lock = kit.model_lock(model)

    # -- what the subclass supplies -------------------------------------------------------

    def layers(self, inputs: ModelInputs) -> LayerTable:
        raise NotImplementedError

    def _scored_with(
        self, inputs: ModelInputs, layer: str, replacement: Any, target: Target, count: int
    ) -> ScoredTarget:
        """The scores of ``inputs`` with ``layer``'s output replaced by ``replacement``."""
        raise NotImplementedError

    def _repeats_prefix(self) -> set[str]:
        """The layers (of this model) whose replacement cannot broadcast one sample."""
        raise NotImplementedError

    def _backward(
        self, inputs: ModelInputs, target: Target, rule: GradientRule, layers: tuple[str, ...]
    ) -> FullGradients:
        raise NotImplementedError

    # -- the model ------------------------------------------------------------------------

    def _layers(self) -> dict[str, Any]:
        return walk_layers(self.keras, self.model)

    def layer_names(self) -> list[str]:
        return list(self._layers())

    def resolve_layer(self, layer: object) -> str:
        return kit.find_layer(layer, self._layers(), self._name, separator="/")

    def _final_softmax_layer(self) -> Any | None:
        """The model's last layer if it applies a softmax that camkit leaves out, else None."""
        return final_softmax_layer(self.keras, self.model)

    def _scope(self) -> contextlib.AbstractContextManager[Any]:
        """Where a :class:`Substituted` model's variables read their new values, else
        nothing."""
        substituted = self._substituted
        return contextlib.nullcontext() if substituted is None else substituted.scope()

    @staticmethod
    def _arguments(inputs: ModelInputs) -> tuple[Any, dict[str, Any]]:
        """The model's input as Keras takes it (one array, a list, or a dict) and the keyword
        arguments of its call."""
        given = inputs.given
        structure = list(given) if isinstance(given, tuple) else given
        return structure, dict(inputs.forward_kwargs)

    def _check_precision(self, precision: Precision) -> None:
        if precision != "float32":
            raise CapabilityError(
                f"precision={precision!r}: the {self.name} backend runs a Keras model in the "
                "dtype policy it was built with; build it under keras.mixed_precision."
                "set_global_policy('mixed_float16') for half-precision passes, and pass "
                "precision='float32'"
            )

    # -- Ablation-CAM ---------------------------------------------------------------------

    def forward_from_layer(
        self, inputs: ModelInputs, layer: str, activations: Any, target: Target,
        *, precision: Precision,
    ) -> ScoredTarget:  # fmt: skip
        """Scores of one sample's ``inputs`` with ``layer``'s output (at its last call)
        replaced by each row of ``activations`` ``(B, ...)``.

        The model runs on the one sample and the layer hands on the ``B`` replacements, so the
        prefix runs once; where a later layer cannot broadcast an earlier one-sample tensor
        (a concatenation) the model runs on ``B`` copies instead, remembered per model.
        """
        self._check_precision(precision)
        count = int(activations.shape[0])
        repeats = self._repeats_prefix()
        if layer not in repeats:
            try:
                scored = self._scored_with(inputs, layer, activations, target, count)
                if scored.scores.shape[0] == count:
                    return scored
            except ModelError as error:
                if not _BATCH_MISMATCH.search(str(error.__cause__)):
                    raise
            repeats.add(layer)
        xp = kit.array_namespace(inputs.image)
        copies = inputs.rows(
            np.zeros(count, np.int64),
            xp.concat([inputs.image] * count, axis=0),
        )
        return self._scored_with(copies, layer, activations, target, count)

    # -- input-space gradients (guided backpropagation, FullGrad) ---------------------------

    def input_gradients(
        self, inputs: ModelInputs, target: Target, *, rule: GradientRule
    ) -> tuple[Any, ScoredTarget]:
        """``dS/dx`` of the image, channels-first ``(N, C, *S)`` float32, every ReLU passing
        gradients back by ``rule`` (``"guided"``: Springenberg et al.'s rule)."""
        full = self._backward(inputs, target, rule, ())
        return full.input_gradients, full.scored

    def bias_layers(self, inputs: ModelInputs) -> dict[str, BiasKind]:
        """The layers with a bias on the channel axis of a feature map (``bias_layers``)."""
        return bias_layers(self.keras, self._layers(), self.layers(inputs))

    def bias_gradients(
        self, inputs: ModelInputs, layers: Sequence[str], target: Target
    ) -> FullGradients:
        """The image's gradient and ``b[c] * dS/dz`` of each of ``layers``, channels-first,
        ``z`` the layer's output before its activation."""
        return self._backward(inputs, target, "standard", tuple(layers))

    # -- the rest of the protocol ---------------------------------------------------------

    def parameter_layers(self, inputs: ModelInputs) -> list[str]:
        """The layers holding trainable variables themselves, in forward order
        (``_randomize``)."""
        return _randomize.parameter_layers(
            self.keras, self.model, self._layers(), self.layers(inputs)
        )

    def randomized(self, layers: Sequence[str], seed: int) -> Substituted:
        """The model with new values for the variables of ``layers`` (``_randomize``)."""
        return _randomize.randomized(
            self.keras, self.model, self._layers(), layers, seed, self._substituted, self._name
        )

    def input_size(self, inputs: ModelInputs) -> tuple[int, ...]:
        return kit.image_size(tuple(inputs.image.shape), channels_last=True)
