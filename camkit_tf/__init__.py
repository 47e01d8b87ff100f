"""camkit's TensorFlow/Keras backend: Keras 3 models on the TensorFlow backend, and tf-keras
models (Keras 3 on JAX and PyTorch: :mod:`camkit_keras`).

This module is what the ``camkit`` entry point loads: it registers the backend without
importing TensorFlow or Keras. The provider lives in :mod:`camkit_tf._provider` and is imported
only when a Keras model is explained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import camkit
from camkit_keras import Substituted, keras_backend_of

__all__ = ["Substituted", "camkit_backends", "is_keras_model"]


def is_keras_model(model: Any) -> bool:
    """Whether ``model`` is a Keras model this backend explains (Keras 3 on TensorFlow,
    tf-keras, or a :class:`~camkit_keras.Substituted` one), without importing."""
    return keras_backend_of(model) in ("tensorflow", "tf_keras")


@camkit.hookimpl
def camkit_backends() -> Sequence[camkit.Backend]:
    return [
        camkit.Backend(
            name="tf",
            provider="camkit_tf._provider:KerasProvider",
            can_handle=is_keras_model,
            available=camkit.module_available("tensorflow"),
            priority=20,
            install="pip install 'camkit[tf]'",
        )
    ]
