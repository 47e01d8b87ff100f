"""A third-party camkit backend for the toy framework of ``toy_framework.py``, written from
camkit's public names alone (``camkit`` and ``camkit.provider``), as a plugin author would.

The toy framework has exact vector-Jacobian products for its layers but no autograd for a
target's score: the gradient of the summed score with respect to the outputs is taken by
central differences of the target's own ``resolve`` in float64 (the outputs are a few numbers;
``score_outputs`` would round the scores to float32), then pulled back through the layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from toy_framework import Conv1x1, Dense, ReLU, Sequential

import camkit
from camkit import provider as kit


class ToyProvider:
    capabilities = frozenset({
        kit.CLASSIFIER_WEIGHTS, kit.FORWARD_SCORES, kit.FORWARD_FROM_LAYER, kit.INPUT_GRADIENTS,
        kit.BIAS_GRADIENTS,
    })  # fmt: skip

    def __init__(self, model: Sequential) -> None:
        self.model = model
        self._lock = kit.model_lock(model)

    def _layers(self) -> dict[str, Any]:
        return {layer.name: layer for layer in self.model.layers}

    def _index(self, name: str) -> int:
        return list(self._layers()).index(name)

    def layer_names(self) -> list[str]:
        return list(self._layers())

    def resolve_layer(self, layer: object) -> str:
        return kit.find_layer(layer, self._layers(), "Sequential")

    def layers(self, inputs: kit.ModelInputs) -> kit.LayerTable:
        x = self._prepare(inputs)
        return kit.layer_table(self.model, inputs.signature(), lambda: self._probe(x))

    def _probe(self, x: np.ndarray) -> kit.LayerTable:
        values = self._run(x)[1:]
        calls = [
            (name, value.shape, "channels_first" if value.ndim == 4 else None)
            for name, value in zip(self._layers(), values, strict=True)
        ]
        return kit.LayerTable.of(calls, self.input_size(kit.ModelInputs(x)))

    def _run(self, x: np.ndarray, start: int = 0) -> list[np.ndarray]:
        with self._lock, kit.running_model("Sequential", x.shape, str(x.dtype)):
            return self.model.trace(x, start)

    def capture(
        self, inputs: kit.ModelInputs, layers: Sequence[str], target: kit.Target,
        *, gradients: bool,
    ) -> kit.Capture:  # fmt: skip
        x = self._prepare(inputs)
        values = self._run(x)
        outputs = values[-1]
        scored = kit.score_outputs(target, outputs, len(x))
        wanted = {self._index(name): name for name in layers}
        found: dict[str, np.ndarray] = {}
        if gradients:
            upstream = self._score_gradient(target, outputs)
            for index in range(len(self.model.layers) - 1, min(wanted) - 1, -1):
                if index in wanted:
                    found[wanted[index]] = upstream
                upstream = self.model.layers[index].vjp(values[index], upstream)
        activations = [values[self._index(name) + 1] for name in layers]
        layer_gradients = [found[name] for name in layers] if gradients else None
        return kit.Capture(
            activations=tuple(a.astype(np.float32) for a in activations),
            gradients=None
            if layer_gradients is None
            else tuple(g.astype(np.float32) for g in layer_gradients),
            outputs=outputs,
            scores=scored.scores,
            indices=scored.indices,
        )

    @staticmethod
    def _score_gradient(target: kit.Target, outputs: np.ndarray, step: float = 1e-5) -> np.ndarray:
        """``d(sum_n S[n]) / d outputs`` by central differences, in float64."""
        gradient = np.zeros_like(outputs)
        for index in np.ndindex(outputs.shape):
            plus, minus = outputs.copy(), outputs.copy()
            plus[index] += step
            minus[index] -= step
            high, low = (np.sum(target.resolve(y).scores) for y in (plus, minus))
            gradient[index] = (high - low) / (2 * step)
        return gradient

    def core_inputs(self, inputs: kit.ModelInputs) -> np.ndarray:
        return self._prepare(inputs).astype(np.float32)

    def native_image(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64)

    def forward_scores(
        self, inputs: kit.ModelInputs, target: kit.Target, *, precision: kit.Precision
    ) -> kit.ScoredTarget:
        x = self._prepare(inputs)
        return kit.score_outputs(target, self._run(x)[-1], len(x))

    def forward_from_layer(
        self, inputs: kit.ModelInputs, layer: str, activations: np.ndarray, target: kit.Target,
        *, precision: kit.Precision,
    ) -> kit.ScoredTarget:  # fmt: skip
        outputs = self._run(np.asarray(activations, np.float64), self._index(layer) + 1)[-1]
        return kit.score_outputs(target, outputs, len(activations))

    def _pullback(
        self, inputs: kit.ModelInputs, target: kit.Target, rule: kit.GradientRule
    ) -> tuple[np.ndarray, dict[str, np.ndarray], kit.ScoredTarget]:
        """``dS/dx``, ``dS/dz`` at every layer's output, and the scores."""
        x = self._prepare(inputs)
        values = self._run(x)
        upstream = self._score_gradient(target, values[-1])
        at_output = {}
        for index in range(len(self.model.layers) - 1, -1, -1):
            layer = self.model.layers[index]
            at_output[layer.name] = upstream
            if rule == "guided" and isinstance(layer, ReLU):
                upstream = np.maximum(upstream, 0)  # only positive gradients pass a ReLU back
            upstream = layer.vjp(values[index], upstream)
        return upstream, at_output, kit.score_outputs(target, values[-1], len(x))

    def input_gradients(
        self, inputs: kit.ModelInputs, target: kit.Target, *, rule: kit.GradientRule
    ) -> tuple[np.ndarray, kit.ScoredTarget]:
        gradient, _, scored = self._pullback(inputs, target, rule)
        return gradient.astype(np.float32), scored

    def bias_layers(self, inputs: kit.ModelInputs) -> dict[str, kit.BiasKind]:
        table = self.layers(inputs)
        return {
            row.name: "convolution" for row in table
            if isinstance(self._layers()[row.name], Conv1x1) and row.spatial is not None
        }  # fmt: skip

    def bias_gradients(
        self, inputs: kit.ModelInputs, layers: Sequence[str], target: kit.Target
    ) -> kit.FullGradients:
        gradient, at_output, scored = self._pullback(inputs, target, "standard")
        terms = tuple(
            (self._layers()[name].bias[None, :, None, None] * at_output[name]).astype(np.float32)
            for name in layers
        )
        return kit.FullGradients(gradient.astype(np.float32), terms, scored)

    def classifier_weights(self, classifier: object | None = None) -> np.ndarray:
        dense = [layer for layer in self.model.layers if isinstance(layer, Dense)]
        return dense[-1].weight.astype(np.float32)

    def input_size(self, inputs: kit.ModelInputs) -> tuple[int, ...]:
        return kit.image_size(tuple(inputs.image.shape))

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def close(self) -> None:
        pass

    def _prepare(self, inputs: kit.ModelInputs) -> np.ndarray:
        image = inputs.image
        if not isinstance(image, np.ndarray):
            raise kit.InputError(f"inputs must be a numpy array, got {type(image).__name__}")
        floating = np.issubdtype(image.dtype, np.floating)
        kit.check_image(image.shape, str(image.dtype), floating=floating)
        return image.astype(np.float64)


BACKEND = camkit.Backend(
    name="toy",
    provider=ToyProvider,
    can_handle=lambda model: isinstance(model, Sequential),
)
