"""A toy third-party backend written in numpy alone, for tests.

``StaticModel`` holds fixed activations and gradients (for hand-computed method checks);
``GapLinearModel`` is a real, tiny model: its input is the feature map, then global average
pooling and a linear layer, with gradients derived by hand (``dS/dA = W[k] / HW``). It also runs
the forward passes of the perturbation methods and metrics, recording each batch's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import camkit
from camkit import provider as kit
from camkit.targets import Target


@dataclass
class StaticModel:
    activations: np.ndarray
    gradients: np.ndarray
    outputs: np.ndarray = field(default_factory=lambda: np.array([[0.0, 1.0, 0.0]], np.float32))
    classifier: np.ndarray | None = None
    #: more layers by name, each (activations, gradients); "features" is the pair above
    extra_layers: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def layer(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name == "features":
            return self.activations, self.gradients
        return self.extra_layers[name]


@dataclass
class GapLinearModel:
    weights: np.ndarray  # (K, C)
    batches: list[int] = field(default_factory=list)  # sizes of the forward passes run

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x.mean(axis=(2, 3)) @ self.weights.T


class NumpyProvider:
    def __init__(self, model: Any) -> None:
        self.model = model
        self.capabilities = frozenset({camkit.CLASSIFIER_WEIGHTS})
        if isinstance(model, GapLinearModel):
            self.capabilities |= {camkit.FORWARD_SCORES, camkit.FORWARD_FROM_LAYER}
        self.closed = False

    def layer_names(self) -> list[str]:
        return ["features", *getattr(self.model, "extra_layers", {})]

    def resolve_layer(self, layer: object) -> str:
        if layer not in self.layer_names():
            raise camkit.LayerError(f"layer={layer!r} is unknown; use one of {self.layer_names()}")
        return str(layer)

    def layers(self, inputs: kit.ModelInputs) -> kit.LayerTable:
        model = self.model
        if isinstance(model, StaticModel):
            shapes = {name: model.layer(name)[0].shape for name in self.layer_names()}
        else:  # the model's input is its feature map
            shapes = {"features": np.shape(inputs.image)}
        calls = [(name, tuple(shape), "channels_first") for name, shape in shapes.items()]
        return kit.LayerTable.of(calls, self.input_size(inputs))

    def capture(
        self, inputs: kit.ModelInputs, layers: Sequence[str], target: Target, *, gradients: bool
    ) -> camkit.Capture:
        model = self.model
        inputs = inputs.image
        if isinstance(model, StaticModel):
            pairs = [model.layer(name) for name in layers]
            outputs = model.outputs
            scored = kit.score_outputs(target, outputs, len(outputs))
            return camkit.Capture(
                activations=tuple(a for a, _ in pairs),
                gradients=tuple(g for _, g in pairs) if gradients else None,
                outputs=outputs,
                scores=scored.scores,
                indices=scored.indices,
            )
        acts = np.asarray(inputs, dtype=np.float32)
        outputs = model(acts)
        scored = kit.score_outputs(target, outputs, len(outputs))
        height, width = acts.shape[2:]
        grads = model.weights[scored.indices][:, :, None, None] / (height * width)
        grads = np.broadcast_to(grads, acts.shape).astype(np.float32)
        return camkit.Capture(
            activations=(acts,),
            gradients=(grads,) if gradients else None,
            outputs=outputs,
            scores=scored.scores,
            indices=scored.indices,
        )

    def core_inputs(self, inputs: kit.ModelInputs) -> np.ndarray:
        return np.asarray(inputs.image, dtype=np.float32)

    def native_image(self, x: np.ndarray) -> np.ndarray:
        return x

    def forward_scores(self, inputs: kit.ModelInputs, target: Target, *, precision: str) -> Any:
        x = inputs.image
        self.model.batches.append(int(x.shape[0]))
        return kit.score_outputs(target, self.model(x), len(x))

    def forward_from_layer(
        self, inputs: kit.ModelInputs, layer: str, activations: np.ndarray, target: Target,
        *, precision: str,
    ) -> Any:  # fmt: skip
        # "features" is the input itself, so the model from the layer on is the whole model
        self.model.batches.append(int(activations.shape[0]))
        return kit.score_outputs(target, self.model(activations), len(activations))

    def classifier_weights(self, classifier: object | None = None) -> np.ndarray:
        weights = getattr(self.model, "classifier", None)
        if weights is None:
            weights = getattr(self.model, "weights", None)
        return weights

    def input_size(self, inputs: kit.ModelInputs) -> tuple[int, ...]:
        if isinstance(self.model, StaticModel):  # no inputs: the maps are the layer's own size
            return tuple(self.model.activations.shape[2:])
        return tuple(np.asarray(inputs.image).shape[2:])

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def close(self) -> None:
        self.closed = True


def is_numpy_model(model: Any) -> bool:
    return isinstance(model, (StaticModel, GapLinearModel))


@camkit.hookimpl
def camkit_backends() -> list[camkit.Backend]:
    return [
        camkit.Backend(
            name="numpy",
            provider="numpy_backend:NumpyProvider",
            can_handle=is_numpy_model,
            priority=1,
        )
    ]
