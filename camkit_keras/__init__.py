"""camkit's backend for Keras 3 on the JAX and PyTorch backends.

Keras 3 runs one model on TensorFlow, JAX or PyTorch, chosen by ``KERAS_BACKEND`` before
``keras`` is imported. A Keras model on TensorFlow (and any tf-keras model) is explained by
:mod:`camkit_tf`, through compiled TensorFlow graphs; on JAX and PyTorch it is explained here:
the Keras side (layers by path, their calls shadowed, layouts, the final softmax, biases) is
the same code as :mod:`camkit_tf`'s (:mod:`camkit_keras._layers`), and the gradients come from
the framework Keras runs on (:mod:`camkit_keras._autodiff`).

This module is what the ``camkit`` entry point loads: it registers the backend without
importing Keras or a framework.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import camkit

from ._substituted import Substituted

__all__ = ["Substituted", "camkit_backends", "keras_backend_of"]

#: The Keras backends this plugin explains; TensorFlow's is :mod:`camkit_tf`'s.
BACKENDS = ("jax", "torch")


def keras_backend_of(model: Any) -> str | None:
    """The backend a Keras model (or a :class:`Substituted` one) runs on: ``"tensorflow"``,
    ``"jax"`` or ``"torch"`` for Keras 3, ``"tf_keras"`` for tf-keras; ``None`` for anything
    that is not a Keras model. Imports nothing: a Keras model's module is already imported."""
    if isinstance(model, Substituted):
        model = model.model
    tf_keras = getattr(sys.modules.get("tf_keras"), "layers", None)
    if tf_keras is not None and isinstance(model, tf_keras.Layer):
        return "tf_keras"
    keras = sys.modules.get("keras")
    layers = getattr(keras, "layers", None)
    if layers is not None and isinstance(model, layers.Layer):
        return str(keras.backend.backend())  # type: ignore[union-attr]
    return None


def _is_keras_on_jax_or_torch(model: Any) -> bool:
    return keras_backend_of(model) in BACKENDS


@camkit.hookimpl
def camkit_backends() -> Sequence[camkit.Backend]:
    return [
        camkit.Backend(
            name="keras",
            provider="camkit_keras._provider:KerasProvider",
            can_handle=_is_keras_on_jax_or_torch,
            available=camkit.module_available("keras"),
            # above torch: a Keras model on the torch Keras backend is also a torch module
            priority=20,
            install="pip install 'camkit[keras]' and the framework KERAS_BACKEND names",
        )
    ]
