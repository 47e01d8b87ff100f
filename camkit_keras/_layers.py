"""What every Keras provider needs from a Keras model, whatever runs it: its layers by path,
their calls shadowed while a function is traced, how each layer's output is laid out, the final
softmax, the classifier, and the biases FullGrad reads.

Nothing here imports a framework: the ``keras`` module (Keras 3 or tf-keras) and the backend's
``is_tensor`` are passed in, so the TensorFlow provider (:mod:`camkit_tf`) and the provider of
Keras 3 on JAX and PyTorch (:mod:`camkit_keras`) share one reading of a Keras model.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from camkit.provider import BiasKind, LayerError, LayerTable, Layout, find_layer

__all__ = [
    "bias_kind",
    "bias_layers",
    "classifier_kernel",
    "default_layout",
    "effective_bias",
    "final_softmax_layer",
    "first_look",
    "first_tensor",
    "keras_layout",
    "layer_calls",
    "logits_of",
    "not_called",
    "relu_layers",
    "shadow_calls",
    "walk_layers",
    "warn_if_probabilities",
    "with_first_tensor",
]


def walk_layers(keras: Any, model: Any) -> dict[str, Any]:
    """Every layer under ``model`` by path (``block/conv``), parents before children, input
    layers left out; a layer reached twice keeps its first path."""
    found: dict[str, Any] = {}
    input_layer = keras.layers.InputLayer

    def walk(layer: Any, prefix: str) -> None:
        for child in layer._flatten_layers(include_self=False, recursive=False):
            if isinstance(child, input_layer):
                continue
            path = prefix + child.name
            found.setdefault(path, child)
            walk(child, path + "/")

    walk(model, "")
    return found


@contextlib.contextmanager
def shadow_calls(
    layers: Mapping[str, Any], wrap: Callable[[str, Any], Any], attribute: str = "call"
) -> Iterator[None]:
    """Shadow each layer's ``call`` (or another ``attribute``, such as its ``activation``) with
    ``wrap(path, original)`` for the calling thread, and always restore it.

    Another thread that runs the model meanwhile gets the original: the shadow checks the
    thread. ``object.__setattr__`` bypasses Keras' (and torch's) attribute tracking, so nothing
    is tracked and the instance dictionary is left exactly as it was.
    """
    thread = threading.get_ident()
    shadowed: list[tuple[Any, bool, Any]] = []

    def shadow(path: str, original: Any) -> Callable[..., Any]:
        wrapped = wrap(path, original)

        def this_thread_only(*args: Any, **kwargs: Any) -> Any:
            chosen = wrapped if threading.get_ident() == thread else original
            return chosen(*args, **kwargs)

        return this_thread_only

    try:
        for path, layer in layers.items():
            own = attribute in vars(layer)
            original = getattr(layer, attribute)
            object.__setattr__(layer, attribute, shadow(path, original))
            shadowed.append((layer, own, original))
        yield
    finally:
        for layer, own, original in reversed(shadowed):
            if own:
                object.__setattr__(layer, attribute, original)
            else:
                object.__delattr__(layer, attribute)


def final_softmax_layer(keras: Any, model: Any) -> Any | None:
    """The model's last layer if it applies a softmax that can be left out, else None."""
    layers = getattr(model, "layers", None)
    if not layers:
        return None
    last = layers[-1]
    softmax_layer = getattr(keras.layers, "Softmax", ())
    activation = getattr(last, "activation", None)
    if isinstance(last, softmax_layer) or getattr(activation, "__name__", "") == "softmax":
        return last
    return None


@contextlib.contextmanager
def logits_of(keras: Any, layer: Any | None) -> Iterator[None]:
    """While the model runs, make its final softmax ``layer`` (if any) return its logits."""
    if layer is None:
        yield
        return
    if isinstance(layer, getattr(keras.layers, "Softmax", ())) or (
        type(layer).__name__ == "Activation"
    ):

        def identity(path: str, call: Callable[..., Any]) -> Callable[..., Any]:
            return lambda inputs, *args, **kwargs: inputs

        with shadow_calls({"softmax": layer}, identity):
            yield
        return
    with shadow_calls({"softmax": layer}, lambda path, f: keras.activations.linear, "activation"):
        yield


_LOOKED_AT: weakref.WeakSet[Any] = weakref.WeakSet()


def first_look(model: Any) -> bool:
    """Whether this is the first time ``model``'s outputs are looked at on the host: a check
    that reads them from the device (``warn_if_probabilities``) runs once per model, not at
    every call, so that later calls never wait on the device."""
    if model in _LOOKED_AT:
        return False
    _LOOKED_AT.add(model)
    return True


def warn_if_probabilities(outputs: Any) -> None:
    """Warn where host ``outputs`` look like softmax probabilities the logits of which camkit
    could not reach."""
    if not isinstance(outputs, np.ndarray):
        return
    if outputs.ndim == 2 and outputs.shape[1] > 1 and outputs.min() >= 0:
        if np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3):
            warnings.warn(
                "the model's outputs look like softmax probabilities and camkit could not "
                "reach the logits (the softmax is not the model's last layer); gradients "
                "of probabilities saturate, so return logits from the model, or pass "
                "target=camkit.targets.SoftmaxTarget(...) to explain the probability",
                UserWarning,
                stacklevel=5,
            )


def first_tensor(value: Any, is_tensor: Callable[[Any], bool]) -> Any:
    """``value`` if it is a tensor, else the first tensor of a list or tuple, else None."""
    if is_tensor(value):
        return value
    if isinstance(value, list | tuple):
        return next((item for item in value if is_tensor(item)), None)
    return None


def with_first_tensor(value: Any, new: Any, is_tensor: Callable[[Any], bool]) -> Any:
    """``value`` (a layer's output) with ``new`` where :func:`first_tensor` finds its tensor:
    ``new`` itself for a tensor, a list or tuple with that item replaced otherwise."""
    if is_tensor(value):
        return new
    items = list(value)
    items[next(i for i, item in enumerate(items) if is_tensor(item))] = new
    return type(value)(items)


def not_called(path: str) -> LayerError:
    """The error for a chosen layer the model's forward pass never called."""
    return LayerError(
        f"layer {path!r} was not called during the forward pass; choose a layer that the model uses"
    )


def keras_layout(
    layer: Any, given: Any, output: Any, known: Mapping[int, Layout], rank: int
) -> Layout | None:
    """The layout of a Keras ``layer``'s ``output`` as far as Keras says: its ``data_format``,
    a normalization's ``axis``, a layer acting on the last axis (``Dense``, ``LayerNorm``:
    channels-last, or tokens on ``(N, T, C)`` over an image), else the layout of the tensor it
    was given (an activation) or returns (``known``, by ``id``); ``None`` if none says."""
    ndim = len(output.shape)
    own = getattr(layer, "data_format", None)
    if own in ("channels_first", "channels_last"):
        return own  # type: ignore[no-any-return]
    axis = getattr(layer, "axis", None)
    axis = axis[0] if isinstance(axis, list | tuple) and len(axis) == 1 else axis
    last_axis = type(layer).__name__ in ("Dense", "EinsumDense", "LayerNormalization")
    if isinstance(axis, int) and not last_axis and ndim == rank + 2:
        return "channels_first" if axis == 1 else "channels_last"
    on_last = last_axis or (isinstance(axis, int) and axis in (-1, ndim - 1))
    if on_last and ndim >= 3:
        return "tokens" if ndim == 3 and rank >= 2 else "channels_last"
    if given is not None and id(given) in known and tuple(given.shape) == tuple(output.shape):
        return known[id(given)]
    return known.get(id(output))


def default_layout(ndim: int, rank: int, channels_first: bool) -> Layout | None:
    """The layout of an output no layer vouches for: a feature map is channels-last (Keras'
    convention) unless the model also makes channels-first ones (then a guess could be
    wrong); ``(N, T, C)`` in a model of images is a transformer's tokens."""
    if ndim == rank + 2:
        return None if channels_first else "channels_last"
    if ndim == 3 and rank >= 2:
        return "tokens"
    return None


def layer_calls(
    layers: Mapping[str, Any], image: Any, is_tensor: Callable[[Any], bool], run: Callable[[], Any]
) -> list[tuple[str, tuple[int, ...], Layout | None]]:
    """Every layer call of one forward pass ``run()`` in order, ``(path, output shape,
    layout)``, the layouts resolved as :func:`keras_layout` and :func:`default_layout` say."""
    rank = len(image.shape) - 2
    known: dict[int, Layout] = {id(image): "channels_last"}  # Keras takes NHWC inputs
    seen: list[Any] = [image]  # alive, so that no id is reused during the probe
    calls: list[tuple[str, tuple[int, ...], Layout | None]] = []

    def record(path: str, call: Callable[..., Any]) -> Callable[..., Any]:
        layer = layers[path]

        def recording_call(*args: Any, **kwargs: Any) -> Any:
            output = call(*args, **kwargs)
            tensor = first_tensor(output, is_tensor)
            if tensor is not None:
                given = first_tensor(args, is_tensor)
                layout = keras_layout(layer, given, tensor, known, rank)
                if layout is not None:
                    known[id(tensor)] = layout
                    seen.append(tensor)
                calls.append((path, tuple(int(s) for s in tensor.shape), layout))
            return output

        return recording_call

    with shadow_calls(layers, record):
        run()
    first = any(lay == "channels_first" and len(s) == rank + 2 for _, s, lay in calls)
    return [
        (path, shape, layout or default_layout(len(shape), rank, first))
        for path, shape, layout in calls
    ]


def classifier_kernel(
    keras: Any, layers: Mapping[str, Any], classifier: object | None, model_name: str
) -> Any:
    """The ``(features, classes)`` kernel variable of ``classifier``, or of the model's last
    ``Dense`` layer (CAM's classifier by default)."""
    if classifier is None:
        dense = [p for p, layer in layers.items() if isinstance(layer, keras.layers.Dense)]
        if not dense:
            raise LayerError(
                f"CAM needs a Dense classifier but {model_name} has none; pass classifier= "
                "the layer holding the class weights"
            )
        classifier = dense[-1]
    path = find_layer(classifier, layers, model_name, separator="/", argument="classifier")
    kernel = getattr(layers[path], "kernel", None)
    if kernel is None or len(kernel.shape) != 2:
        raise LayerError(f"classifier={path!r} has no (features, classes) kernel")
    return kernel


def bias_kind(keras: Any, layer: Any, channels: int) -> BiasKind | None:
    """What holds ``layer``'s bias, ``(channels,)`` on its output's channel axis, or ``None``
    for a layer without one."""
    if isinstance(layer, keras.layers.BatchNormalization):
        kind: BiasKind = "normalization"
        bias = layer.moving_mean
    elif getattr(layer, "bias", None) is None:
        return None
    elif isinstance(layer, keras.layers.Dense) or hasattr(layer, "kernel_size"):
        kind = "linear" if isinstance(layer, keras.layers.Dense) else "convolution"
        bias = layer.bias
    else:
        return None
    return kind if tuple(bias.shape) == (channels,) else None


def bias_layers(keras: Any, layers: Mapping[str, Any], table: LayerTable) -> dict[str, BiasKind]:
    """The layers with a bias on the channel axis of a feature map: convolutions, batch
    normalizations, and ``Dense`` layers applied to a feature map."""
    found: dict[str, BiasKind] = {}
    for row in table:
        if row.spatial is None or row.layout not in ("channels_first", "channels_last"):
            continue
        channels = row.shape[1] if row.layout == "channels_first" else row.shape[-1]
        kind = bias_kind(keras, layers[row.name], channels)
        if kind is not None:
            found[row.name] = kind
    return found


def effective_bias(ops: Any, keras: Any, layer: Any) -> Any:
    """``(C,)`` float32: ``layer``'s bias, or a batch normalization's effective bias in
    inference, ``beta - moving_mean * gamma / sqrt(moving_variance + eps)`` (its affine map
    ``gamma (z - mean) / sqrt(var + eps) + beta`` written as ``scale * z + bias``). ``ops`` has
    ``cast``, ``convert_to_tensor``, ``rsqrt`` and ``zeros_like``: ``keras.ops``, or
    TensorFlow's for tf-keras."""

    def value(variable: Any) -> Any:
        return ops.cast(ops.convert_to_tensor(variable), "float32")

    if not isinstance(layer, keras.layers.BatchNormalization):
        return value(layer.bias)
    scale = ops.rsqrt(value(layer.moving_variance) + layer.epsilon)
    if layer.scale:
        scale = scale * value(layer.gamma)
    shift = value(layer.beta) if layer.center else ops.zeros_like(scale)
    return shift - value(layer.moving_mean) * scale


def relu_layers(keras: Any, layers: Mapping[str, Any]) -> tuple[frozenset[str], frozenset[str]]:
    """The plain ``ReLU`` layers (no negative slope, no threshold; a ``max_value`` allowed),
    and the layers whose ``activation`` is ``relu``."""
    plain = frozenset(
        path
        for path, layer in layers.items()
        if isinstance(layer, keras.layers.ReLU) and not layer.negative_slope and not layer.threshold
    )
    activations = frozenset(
        path
        for path, layer in layers.items()
        if getattr(getattr(layer, "activation", None), "__name__", None) == "relu"
    )
    return plain, activations
