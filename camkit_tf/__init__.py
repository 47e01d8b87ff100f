"""camkit's TensorFlow/Keras backend.

This module is what the ``camkit`` entry point loads: it registers the backend without
importing TensorFlow or Keras. The provider lives in :mod:`camkit_tf._provider` and is imported
only when a Keras model is explained.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import camkit

from ._substituted import Substituted

__all__ = ["Substituted", "camkit_backends", "is_keras_model"]

_KERAS_MODULES = ("keras", "tf_keras")


def is_keras_model(model: Any) -> bool:
    """Whether ``model`` is a Keras layer or model (Keras 3 or tf-keras), or a
    :class:`Substituted` one, without importing."""
    if isinstance(model, Substituted):
        return True
    for name in _KERAS_MODULES:
        keras = sys.modules.get(name)
        layers = getattr(keras, "layers", None)
        if layers is not None and isinstance(model, layers.Layer):
            return True
    return False


@camkit.hookimpl
def camkit_backends() -> Sequence[camkit.Backend]:
    return [
        camkit.Backend(
            name="tf",
            provider="camkit_tf._provider:KerasProvider",
            can_handle=is_keras_model,
            available=camkit.module_available("tensorflow"),
            # above torch: a Keras model on the torch Keras backend is also a torch module,
            # and this backend explains what to do with it
            priority=20,
            install="pip install 'camkit[tf]'",
        )
    ]
