"""The few Array API functions camkit's targets call, in TensorFlow.

TensorFlow has no Array API namespace. Rather than a second copy of every target's scoring in
TensorFlow ops, this shim lets the targets' own Array API code run on TensorFlow tensors, eager
or inside a ``tf.function`` (in the manner of einops' backends). It is registered with
:func:`camkit.provider.register_namespace` when the provider is imported.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = ["TensorFlowNamespace"]


class TensorFlowNamespace:
    """``array_namespace(x)`` for TensorFlow tensors: the functions targets use."""

    float32 = tf.float32
    int32 = tf.int32
    int64 = tf.int64

    @staticmethod
    def device(x: Any) -> Any:
        return getattr(x, "device", None)

    @staticmethod
    def asarray(obj: Any, dtype: Any = None, device: Any = None, copy: Any = None) -> Any:
        tensor = obj if tf.is_tensor(obj) else tf.convert_to_tensor(obj)
        return tensor if dtype is None else tf.cast(tensor, dtype)

    @staticmethod
    def astype(x: Any, dtype: Any) -> Any:
        return tf.cast(x, dtype)

    @staticmethod
    def arange(start: int, stop: int | None = None, step: int = 1, *, dtype: Any = None,
               device: Any = None) -> Any:  # fmt: skip
        return tf.range(start, stop, step, dtype=dtype or tf.int64)

    @staticmethod
    def full_like(x: Any, fill_value: Any, *, dtype: Any = None, device: Any = None) -> Any:
        return tf.fill(tf.shape(x), tf.constant(fill_value, dtype or x.dtype))

    @staticmethod
    def argmax(x: Any, axis: int | None = None, keepdims: bool = False) -> Any:
        found = tf.argmax(x, axis=axis or 0, output_type=tf.int64)
        return tf.expand_dims(found, axis) if keepdims else found

    @staticmethod
    def where(condition: Any, x: Any, y: Any) -> Any:
        return tf.where(condition, x, y)

    @staticmethod
    def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return tf.reduce_sum(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def max(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return tf.reduce_max(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def exp(x: Any) -> Any:
        return tf.exp(x)

    @staticmethod
    def permute_dims(x: Any, axes: tuple[int, ...]) -> Any:
        return tf.transpose(x, axes)

    @staticmethod
    def reshape(x: Any, shape: tuple[int, ...]) -> Any:
        return tf.reshape(x, shape)

    @staticmethod
    def argsort(x: Any, axis: int = -1, descending: bool = False, stable: bool = True) -> Any:
        direction = "DESCENDING" if descending else "ASCENDING"
        return tf.argsort(x, axis=axis, direction=direction, stable=stable)

    @staticmethod
    def broadcast_to(x: Any, shape: tuple[int, ...]) -> Any:
        return tf.broadcast_to(x, shape)

    @staticmethod
    def stack(arrays: Any, axis: int = 0) -> Any:
        return tf.stack(list(arrays), axis=axis)

    @staticmethod
    def concat(arrays: Any, axis: int = 0) -> Any:
        return tf.concat(list(arrays), axis=axis)

    @staticmethod
    def maximum(x1: Any, x2: Any) -> Any:
        return tf.maximum(x1, x2)

    @staticmethod
    def minimum(x1: Any, x2: Any) -> Any:
        return tf.minimum(x1, x2)

    @staticmethod
    def abs(x: Any) -> Any:
        return tf.abs(x)

    @staticmethod
    def sqrt(x: Any) -> Any:
        return tf.sqrt(x)

    @staticmethod
    def isfinite(x: Any) -> Any:
        return tf.math.is_finite(x)

    @staticmethod
    def all(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return tf.reduce_all(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def zeros(shape: tuple[int, ...], *, dtype: Any = None, device: Any = None) -> Any:
        return tf.zeros(shape, dtype or tf.float32)

    @staticmethod
    def full(shape: tuple[int, ...], fill_value: Any, *, dtype: Any = None,
             device: Any = None) -> Any:  # fmt: skip
        return tf.fill(shape, tf.constant(fill_value, dtype or tf.float32))

    @staticmethod
    def zeros_like(x: Any, *, dtype: Any = None, device: Any = None) -> Any:
        return tf.zeros_like(x, dtype=dtype)

    @staticmethod
    def ones_like(x: Any, *, dtype: Any = None, device: Any = None) -> Any:
        return tf.ones_like(x, dtype=dtype)
