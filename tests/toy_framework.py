"""A toy deep-learning framework in numpy: layers with a forward pass and a vector-Jacobian
product, chained in a :class:`Sequential`. It stands for a framework camkit does not know, for
which a third party writes a backend (``toy_backend.py``) from camkit's public names alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Layer:
    name: str

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def vjp(self, x: np.ndarray, upstream: np.ndarray) -> np.ndarray:
        """``d<upstream, forward(x)>/dx``."""
        raise NotImplementedError


@dataclass
class Conv1x1(Layer):
    """A 1x1 convolution: ``y[n, o] = sum_c weight[o, c] x[n, c] + bias[o]``, ``(N, C, H, W)``."""

    weight: np.ndarray = field(default_factory=lambda: np.zeros((1, 1)))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(1))

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.einsum("oc,nchw->nohw", self.weight, x) + self.bias[None, :, None, None]

    def vjp(self, x: np.ndarray, upstream: np.ndarray) -> np.ndarray:
        return np.einsum("oc,nohw->nchw", self.weight, upstream)


@dataclass
class ReLU(Layer):
    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0)

    def vjp(self, x: np.ndarray, upstream: np.ndarray) -> np.ndarray:
        return upstream * (x > 0)


@dataclass
class GlobalAveragePool(Layer):
    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.mean(axis=(2, 3))

    def vjp(self, x: np.ndarray, upstream: np.ndarray) -> np.ndarray:
        height, width = x.shape[2:]
        return np.broadcast_to(upstream[:, :, None, None] / (height * width), x.shape).copy()


@dataclass
class Dense(Layer):
    """``y = x @ weight.T + bias``, ``(N, C) -> (N, K)``."""

    weight: np.ndarray = field(default_factory=lambda: np.zeros((1, 1)))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(1))

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias

    def vjp(self, x: np.ndarray, upstream: np.ndarray) -> np.ndarray:
        return upstream @ self.weight


@dataclass(eq=False)
class Sequential:
    layers: list[Layer]

    def trace(self, x: np.ndarray, start: int = 0) -> list[np.ndarray]:
        """The input of layer ``start`` and the output of every layer from it on."""
        values = [x]
        for layer in self.layers[start:]:
            values.append(layer.forward(values[-1]))
        return values

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.trace(x)[-1]


def small_cnn(seed: int = 0) -> Sequential:
    """1x1 conv (3 -> 4), ReLU, 1x1 conv (4 -> 4), ReLU, global average pooling, dense (4 -> 3)."""
    rng = np.random.default_rng(seed)
    return Sequential([
        Conv1x1("conv1", rng.normal(size=(4, 3)), rng.normal(size=4) * 0.1),
        ReLU("relu1"),
        Conv1x1("conv2", rng.normal(size=(4, 4)), rng.normal(size=4) * 0.1),
        ReLU("relu2"),
        GlobalAveragePool("pool"),
        Dense("fc", rng.normal(size=(3, 4)), rng.normal(size=3) * 0.1),
    ])  # fmt: skip
