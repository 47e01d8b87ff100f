"""The demo's pretrained EfficientNet-Lite0 ported from PyTorch to Flax NNX and Keras, weight for
weight: the factories of a cross-framework study (``camkit.run_study``) on real weights.

Each factory returns ``(model, images)``: the model and scikit-image's photos (224 px centre
crops, the demo's preprocessing) in that framework's layout. The ports rebuild the network from
the PyTorch modules it is made of, reading every choice from them rather than from a table:

- padding: the PyTorch model pads each convolution by its own ``ZeroPad2d`` (TensorFlow's
  "same", asymmetric for strided convolutions: one more row and column at the bottom right);
  the ports pad by the same amounts explicitly, never by their framework's ``"same"``;
- batch normalization: inference with the running statistics and the model's epsilon (1e-3);
- ReLU6 after the stem, every expansion and depthwise convolution and the head;
- the skip connection exactly where the PyTorch block adds it (its condition compares the
  block's stride with 1, and a stride given as a list ``[1]`` fails it: the first block of
  each stage has no skip, as in the PyTorch model);
- dropout is off (inference).

Kernels move from PyTorch's ``(O, I, kh, kw)`` to ``(kh, kw, I, O)`` (depthwise: Keras
``(kh, kw, C, 1)``, Flax ``(kh, kw, 1, C)`` with ``feature_group_count=C``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

PHOTOS = ("coffee", "chelsea", "astronaut")


def _torch_model_and_photos() -> tuple[Any, Any]:
    from camkit._demo import load_model, load_photos, to_model_inputs

    return load_model(), to_model_inputs(load_photos(PHOTOS))


def torch_efficientnet() -> tuple[Any, Any]:
    """The PyTorch model and the photos ``(3, 3, 224, 224)``."""
    return _torch_model_and_photos()


def _numpy(tensor: Any) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float32)


def _padding(conv: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` of a ``Conv2dStaticSamePadding``."""
    pad = conv.static_padding
    left, right, top, bottom = getattr(pad, "padding", (0, 0, 0, 0))
    return (top, bottom), (left, right)


def _stride(conv: Any) -> int:
    stride = conv.stride
    return int(stride[0] if isinstance(stride, list | tuple) else stride)


def _batch_norm(bn: Any) -> dict[str, np.ndarray]:
    return {
        "gamma": _numpy(bn.weight),
        "beta": _numpy(bn.bias),
        "mean": _numpy(bn.running_mean),
        "variance": _numpy(bn.running_var),
    }


def _skips(block: Any) -> bool:
    """Whether the PyTorch block adds its input (the model's own condition, verbatim)."""
    args = block._block_args
    return bool(block.id_skip and args.stride == 1 and args.input_filters == args.output_filters)


# -- Flax NNX -----------------------------------------------------------------------------------


def nnx_efficientnet() -> tuple[Any, Any]:
    """The port to Flax NNX and the photos ``(3, 224, 224, 3)``, channels-last."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    torch_model, images = _torch_model_and_photos()
    rngs = nnx.Rngs(0)

    def conv(torch_conv: Any, depthwise: bool = False) -> nnx.Conv:
        weight = _numpy(torch_conv.weight)  # (O, I / groups, kh, kw)
        out_channels, kernel = weight.shape[0], weight.shape[2:]
        groups = out_channels if depthwise else 1
        layer = nnx.Conv(
            weight.shape[1] * groups, out_channels, kernel, strides=_stride(torch_conv),
            padding=_padding(torch_conv), feature_group_count=groups, use_bias=False, rngs=rngs,
        )  # fmt: skip
        layer.kernel[...] = jnp.asarray(weight.transpose(2, 3, 1, 0))
        return layer

    def batch_norm(bn: Any) -> nnx.BatchNorm:
        values = _batch_norm(bn)
        layer = nnx.BatchNorm(
            len(values["gamma"]), use_running_average=True, epsilon=bn.eps, rngs=rngs
        )
        layer.scale[...] = jnp.asarray(values["gamma"])
        layer.bias[...] = jnp.asarray(values["beta"])
        layer.mean[...] = jnp.asarray(values["mean"])
        layer.var[...] = jnp.asarray(values["variance"])
        return layer

    class ReLU6(nnx.Module):
        def __call__(self, x: jax.Array) -> jax.Array:
            return jax.nn.relu6(x)

    class Block(nnx.Module):
        def __init__(self, block: Any) -> None:
            expands = block._block_args.expand_ratio != 1
            self.expand = conv(block._expand_conv) if expands else None
            self.bn0 = batch_norm(block._bn0) if expands else None
            self.act0 = ReLU6()
            self.depthwise = conv(block._depthwise_conv, depthwise=True)
            self.bn1 = batch_norm(block._bn1)
            self.act1 = ReLU6()
            self.project = conv(block._project_conv)
            self.bn2 = batch_norm(block._bn2)
            self.skip = _skips(block)

        def __call__(self, inputs: jax.Array) -> jax.Array:
            x = inputs
            if self.expand is not None and self.bn0 is not None:
                x = self.act0(self.bn0(self.expand(x)))
            x = self.act1(self.bn1(self.depthwise(x)))
            x = self.bn2(self.project(x))
            return x + inputs if self.skip else x

    class EfficientNetLite0(nnx.Module):
        def __init__(self) -> None:
            self.stem = conv(torch_model._conv_stem)
            self.bn0 = batch_norm(torch_model._bn0)
            self.stem_act = ReLU6()
            self.blocks = nnx.List([Block(block) for block in torch_model._blocks])
            self.head = conv(torch_model._conv_head)
            self.bn1 = batch_norm(torch_model._bn1)
            self.head_act = ReLU6()
            fc = torch_model._fc
            self.fc = nnx.Linear(fc.in_features, fc.out_features, rngs=rngs)
            self.fc.kernel[...] = jnp.asarray(_numpy(fc.weight).T)
            self.fc.bias[...] = jnp.asarray(_numpy(fc.bias))

        def __call__(self, x: jax.Array) -> jax.Array:
            x = self.stem_act(self.bn0(self.stem(x)))
            for block in self.blocks:
                x = block(x)
            x = self.head_act(self.bn1(self.head(x)))
            return self.fc(x.mean(axis=(1, 2)))

    model = EfficientNetLite0()
    return model, np.ascontiguousarray(_numpy(images).transpose(0, 2, 3, 1))


# -- Keras --------------------------------------------------------------------------------------


def keras_efficientnet() -> tuple[Any, Any]:
    """The port to Keras 3 (functional) and the photos ``(3, 224, 224, 3)``, channels-last."""
    import keras

    torch_model, images = _torch_model_and_photos()
    layers = keras.layers

    def conv(x: Any, torch_conv: Any, name: str, depthwise: bool = False) -> Any:
        weight = _numpy(torch_conv.weight)
        x = layers.ZeroPadding2D(_padding(torch_conv), name=f"{name}_pad")(x)
        if depthwise:
            layer = layers.DepthwiseConv2D(
                weight.shape[2:], strides=_stride(torch_conv), use_bias=False, name=name
            )
            x = layer(x)
            layer.set_weights([weight.transpose(2, 3, 0, 1)])  # (kh, kw, C, 1)
            return x
        layer = layers.Conv2D(
            weight.shape[0], weight.shape[2:], strides=_stride(torch_conv), use_bias=False,
            name=name,
        )  # fmt: skip
        x = layer(x)
        layer.set_weights([weight.transpose(2, 3, 1, 0)])
        return x

    def batch_norm(x: Any, bn: Any, name: str) -> Any:
        layer = layers.BatchNormalization(epsilon=bn.eps, name=name)
        x = layer(x)
        values = _batch_norm(bn)
        layer.set_weights([values["gamma"], values["beta"], values["mean"], values["variance"]])
        return x

    inputs = keras.Input((224, 224, 3))
    x = conv(inputs, torch_model._conv_stem, "stem")
    x = layers.ReLU(max_value=6.0, name="stem_act")(batch_norm(x, torch_model._bn0, "bn0"))
    for index, block in enumerate(torch_model._blocks):
        name = f"block{index}"
        block_input = x
        if block._block_args.expand_ratio != 1:
            x = conv(x, block._expand_conv, f"{name}_expand")
            x = layers.ReLU(max_value=6.0, name=f"{name}_act0")(
                batch_norm(x, block._bn0, f"{name}_bn0")
            )
        x = conv(x, block._depthwise_conv, f"{name}_depthwise", depthwise=True)
        x = layers.ReLU(max_value=6.0, name=f"{name}_act1")(
            batch_norm(x, block._bn1, f"{name}_bn1")
        )
        x = batch_norm(conv(x, block._project_conv, f"{name}_project"), block._bn2, f"{name}_bn2")
        if _skips(block):
            x = layers.Add(name=f"{name}_add")([x, block_input])
    x = conv(x, torch_model._conv_head, "head")
    x = layers.ReLU(max_value=6.0, name="head_act")(batch_norm(x, torch_model._bn1, "bn1"))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    fc = torch_model._fc
    dense = layers.Dense(fc.out_features, name="fc")
    outputs = dense(x)
    dense.set_weights([_numpy(fc.weight).T, _numpy(fc.bias)])
    model = keras.Model(inputs, outputs, name="efficientnet_lite0")
    return model, np.ascontiguousarray(_numpy(images).transpose(0, 2, 3, 1))
