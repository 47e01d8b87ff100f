"""What input-space backpropagation needs from Keras: guided ReLUs and layers' biases.

Guided ReLUs: while a compiled backward pass is traced, the provider shadows (as it shadows
``call`` for a capture, restored when the trace ends) the ``activation`` of every layer whose
activation is ``relu`` (``Conv2D(activation="relu")``, ``Activation("relu")``) and the ``call``
of every plain ``ReLU`` layer with :func:`guided_relu`, whose backward pass is Springenberg et
al.'s rule. A ReLU the model applies in its own code (``tf.nn.relu`` or ``keras.ops.relu`` in a
subclassed ``call``) cannot be reached so; :func:`check_all_guided` finds any such ``Relu``
op left in the traced graph and refuses the model, rather than return a standard gradient.

Biases: a convolution's or ``Dense`` layer's ``bias``, and a ``BatchNormalization``'s
effective bias in inference, ``beta - moving_mean * gamma / sqrt(moving_variance + eps)``,
read from the layers' variables inside the graph (so always their current values).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from camkit.provider import CapabilityError
from camkit_keras._layers import effective_bias as layers_effective_bias
from camkit_keras._layers import relu_layers

__all__ = ["check_all_guided", "effective_bias", "guided_relu", "relu_routes"]


@tf.custom_gradient
def guided_relu(x: tf.Tensor) -> Any:
    """``max(x, 0)`` whose backward pass is ``dL/dx = [x > 0] * ReLU(dL/dy)``. It is a
    ``Maximum`` op, never a ``Relu``, so that :func:`check_all_guided` tells it apart."""
    positive = x > 0

    def backward(upstream: tf.Tensor) -> tf.Tensor:
        passed = tf.logical_and(positive, upstream > 0)
        return tf.where(passed, upstream, tf.zeros_like(upstream))

    return tf.maximum(x, tf.zeros_like(x)), backward


def _guided_relu_layer(layer: Any) -> Callable[..., Any]:
    """A plain ``ReLU`` layer's ``call`` (its ``max_value`` kept) made guided."""
    ceiling = layer.max_value

    def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        output = guided_relu(inputs)
        return output if ceiling is None else tf.minimum(output, tf.cast(ceiling, output.dtype))

    return call


def relu_routes(
    keras: Any, layers: Mapping[str, Any]
) -> tuple[dict[str, Callable[..., Any]], frozenset[str]]:
    """The guided ``call`` of each plain ``ReLU`` layer, and the layers whose ``activation`` is
    ``relu`` (:func:`camkit_keras._layers.relu_layers`)."""
    plain, activations = relu_layers(keras, layers)
    return {path: _guided_relu_layer(layers[path]) for path in plain}, activations


def check_all_guided(graph: Any) -> None:
    """A ``CapabilityError`` if the traced ``graph`` still holds a ``Relu`` op."""
    plain = [op.name for op in graph.get_operations() if op.type == "Relu"]
    if plain:
        raise CapabilityError(
            f"guided backpropagation: the model applies a ReLU ({plain[0]!r}) in its own code "
            "(tf.nn.relu or keras.ops.relu in a call), which camkit cannot guide; use "
            "keras.layers.ReLU() or activation='relu' layers for it"
        )


#: What :func:`camkit_keras._layers.effective_bias` needs, from TensorFlow (tf-keras has no
#: ``keras.ops``).
_OPS = types.SimpleNamespace(
    cast=tf.cast, convert_to_tensor=tf.convert_to_tensor, rsqrt=tf.math.rsqrt,
    zeros_like=tf.zeros_like,
)  # fmt: skip


def effective_bias(keras: Any, layer: Any) -> tf.Tensor:
    """``(C,)`` float32: ``layer``'s bias, or a batch normalization's effective bias."""
    return layers_effective_bias(_OPS, keras, layer)
