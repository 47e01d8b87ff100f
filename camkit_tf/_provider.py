"""The Keras provider: activations and ``dS/dA`` from a Keras model on TensorFlow.

How a capture runs, and why:

- No functional sub-model is built (that is what fails on nested and subclassed models with
  "Graph disconnected"). Instead the capture is a ``tf.function`` in which, while it is being
  traced, each chosen layer's ``call`` is shadowed by a wrapper that records its output and
  ``tape.watch``-es it. The wrapper is removed as soon as the trace ends: the compiled graph
  keeps the capture, the model keeps nothing.
- The compiled capture is cached per model (weakly: the cache holds no model alive), layers,
  target kind and gradient need, so one-call ``camkit.explain`` reuses it too; TensorFlow
  reuses it for inputs of the same shape (``traces`` counts traces, for tests).
- Gradients come from ``GradientTape.gradient(sum_n S[n], A)`` with respect to the watched
  layer outputs only; the tape watches no variables.
- Keras is channels-last: activations ``(N, H, W, C)`` are handed to the core as
  ``(N, C, H, W)`` numpy arrays (TensorFlow has no Array API namespace), so every method is the
  same code as for PyTorch.
- A model whose last layer applies a softmax is explained on its logits: while tracing, that
  layer's softmax is left out. Where the softmax is out of reach and the outputs look like
  probabilities, a warning says so.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from camkit import (
    CLASSIFIER_WEIGHTS,
    FORWARD_FROM_LAYER,
    FORWARD_SCORES,
    Capture,
    InputError,
    LayerError,
)
from camkit._errors import BackendError, CamkitError, CapabilityError, closest_names
from camkit._layers import last_spatial_layer
from camkit._targets import ScoredTarget, TracedTarget, trace_target, validate_target
from camkit.targets import Target

__all__ = ["KerasProvider"]


def _keras_module(model: Any) -> Any:
    import importlib

    root = type(model).__module__.split(".")[0]
    return importlib.import_module("tf_keras" if root == "tf_keras" else "keras")


@contextlib.contextmanager
def _shadow_calls(layers: Mapping[str, Any], wrap: Callable[[str, Any], Any]) -> Iterator[None]:
    """Shadow each layer's ``call`` with ``wrap(path, call)`` and always restore it.

    ``object.__setattr__`` bypasses Keras' attribute tracking, so nothing is tracked and the
    instance dictionary is left exactly as it was.
    """
    shadowed: list[tuple[Any, bool, Any]] = []
    try:
        for path, layer in layers.items():
            own = "call" in vars(layer)
            original = layer.call
            object.__setattr__(layer, "call", wrap(path, original))
            shadowed.append((layer, own, original))
        yield
    finally:
        for layer, own, original in reversed(shadowed):
            if own:
                object.__setattr__(layer, "call", original)
            else:
                object.__delattr__(layer, "call")


@contextlib.contextmanager
def _logits_of(keras: Any, layer: Any | None) -> Iterator[None]:
    """While tracing, make the final softmax layer return its logits."""
    if layer is None:
        yield
        return
    if isinstance(layer, getattr(keras.layers, "Softmax", ())) or (
        type(layer).__name__ == "Activation"
    ):

        def identity(path: str, call: Callable[..., Any]) -> Callable[..., Any]:
            return lambda inputs, *args, **kwargs: inputs

        with _shadow_calls({"softmax": layer}, identity):
            yield
        return
    activation = layer.activation
    object.__setattr__(layer, "activation", keras.activations.linear)
    try:
        yield
    finally:
        object.__setattr__(layer, "activation", activation)


@dataclass
class _ModelCache:
    """The compiled captures of one model, and how often they were traced."""

    functions: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    traces: int = 0
    repeats_prefix: set[str] = field(default_factory=set)  # layers whose prefix can't broadcast


# per model, weakly: one-call camkit.explain reuses the compiled capture of an earlier call
_CACHES: weakref.WeakKeyDictionary[Any, _ModelCache] = weakref.WeakKeyDictionary()


def _score(key: tuple[Any, ...], outputs: Any, indices: Any, mask: Any) -> tuple[Any, Any]:
    """In-graph scores ``(N,)`` float32 and output indices ``(N,)`` int32 for a target key."""
    kind = key[0]
    if kind == "callable":
        scores = tf.cast(key[1](outputs), tf.float32)
        return scores, tf.fill(tf.shape(scores), -1)
    outputs = tf.cast(outputs, tf.float32)
    if kind in ("class", "softmax"):
        top = tf.argmax(outputs, axis=-1, output_type=tf.int32)
        chosen = tf.where(indices >= 0, indices, top)
        chosen = tf.clip_by_value(chosen, 0, tf.shape(outputs)[-1] - 1)  # validated after
        values = tf.nn.softmax(outputs, axis=-1) if kind == "softmax" else outputs
        return tf.gather(values, chosen, batch_dims=1), chosen
    if kind == "regression":
        output = key[1]
        if outputs.shape.rank == 1:
            scores = outputs
        else:
            scores = outputs[:, min(output, outputs.shape[-1] - 1)]
        return scores, tf.fill(tf.shape(scores), output)
    class_index = key[1]  # segmentation, channels-last outputs (N, H, W, K)
    plane = outputs[..., min(class_index, outputs.shape[-1] - 1)] * mask
    scores = tf.reduce_sum(plane, axis=(1, 2))
    return scores, tf.fill(tf.shape(scores), class_index)


def _is_feature_map(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and shape[1] * shape[2] > 1  # (N, H, W, C)


def _channels_first(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(array, -1, 1)) if array.ndim == 4 else array


class KerasProvider:
    """Captures activations and gradients of a Keras model running on TensorFlow."""

    capabilities = frozenset({CLASSIFIER_WEIGHTS, FORWARD_SCORES, FORWARD_FROM_LAYER})

    def __init__(self, model: Any) -> None:
        keras = _keras_module(model)
        if not isinstance(model, keras.layers.Layer):
            raise InputError(f"the tf backend needs a Keras model, got {type(model).__qualname__}")
        backend = keras.backend.backend() if hasattr(keras.backend, "backend") else "tensorflow"
        if backend != "tensorflow":
            raise BackendError(
                f"this Keras model runs on the {backend!r} Keras backend; camkit explains Keras "
                "models through TensorFlow: set KERAS_BACKEND=tensorflow before importing "
                f"keras (or explain a native {backend} model with camkit's {backend} backend)"
            )
        self.keras = keras
        self.model = model
        self._cache = _CACHES.setdefault(model, _ModelCache())
        self._default_layers: dict[tuple[int, ...], str] = {}

    @property
    def traces(self) -> int:
        """How many times this model's captures were traced (compiled), for tests."""
        return self._cache.traces

    # -- layers ---------------------------------------------------------------------------

    def _layers(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        input_layer = self.keras.layers.InputLayer

        def walk(layer: Any, prefix: str) -> None:
            for child in layer._flatten_layers(include_self=False, recursive=False):
                if isinstance(child, input_layer):
                    continue
                path = prefix + child.name
                found.setdefault(path, child)
                walk(child, path + "/")

        walk(self.model, "")
        return found

    def layer_names(self) -> list[str]:
        return list(self._layers())

    def resolve_layer(self, layer: object) -> str:
        layers = self._layers()
        if isinstance(layer, str):
            if layer in layers:
                return layer
            matches = [path for path in layers if path.rsplit("/", 1)[-1] == layer]
            if len(matches) == 1:
                return matches[0]
            if matches:
                raise LayerError(f"layer={layer!r} is ambiguous; use one of the paths {matches}")
            raise LayerError(
                f"layer={layer!r} is not a layer of {self.model.name!r}; nested layers are named "
                f"by path ('backbone/conv5_block3_out'); {closest_names(layer, layers)}"
            )
        if isinstance(layer, self.keras.layers.Layer):
            for path, candidate in layers.items():
                if candidate is layer:
                    return path
            raise LayerError(f"layer {layer.name!r} is not a layer of {self.model.name!r}")
        raise LayerError(
            f"layer={layer!r} is neither a name nor a Keras layer; pass a name such as "
            "'conv5_block3_out', a path such as 'backbone/conv5_block3_out', or the layer"
        )

    def default_layer(self, inputs: Any) -> str:
        x = self._prepare(inputs)
        known = self._default_layers.get(tuple(x.shape))
        if known is not None:
            return known
        calls: list[tuple[str, tuple[int, ...]]] = []

        def record(path: str, call: Callable[..., Any]) -> Callable[..., Any]:
            def recording_call(*args: Any, **kwargs: Any) -> Any:
                output = call(*args, **kwargs)
                if tf.is_tensor(output):
                    calls.append((path, tuple(output.shape)))
                return output

            return recording_call

        with _shadow_calls(self._layers(), record):
            self._forward(lambda: self.model(x, training=False), x)
        path = last_spatial_layer(calls, _is_feature_map, repr(self.model.name), tuple(x.shape))
        self._default_layers[tuple(x.shape)] = path
        return path

    # -- capture --------------------------------------------------------------------------

    def capture(
        self, inputs: Any, layers: Sequence[str], target: Target, *, gradients: bool
    ) -> Capture:
        x = self._prepare(inputs)
        plan = trace_target(target, int(x.shape[0]))
        key = (tuple(layers), plan.key, gradients)
        functions = self._cache.functions
        if key not in functions:
            functions[key] = self._build(tuple(layers), plan.key, gradients)
        compiled = functions[key]
        activations, layer_gradients, outputs, scores, indices, softmax_reached = self._forward(
            lambda: compiled(x, tf.constant(plan.indices), tf.constant(plan.mask)), x
        )
        host_outputs = outputs.numpy()
        validate_target(target, host_outputs, channels_last=True)
        if plan.key[0] == "class" and not bool(softmax_reached):
            self._warn_if_probabilities(host_outputs)
        return Capture(
            activations=tuple(_channels_first(a.numpy().astype(np.float32)) for a in activations),
            gradients=(
                tuple(_channels_first(g.numpy().astype(np.float32)) for g in layer_gradients)
                if gradients
                else None
            ),
            outputs=host_outputs,
            scores=scores.numpy(),
            indices=None if plan.key[0] == "callable" else indices.numpy().astype(np.int64),
        )

    def _build(self, layers: tuple[str, ...], target_key: tuple[Any, ...], gradients: bool) -> Any:
        # The function is cached with the model and must not keep it alive: it holds the model
        # weakly, and the layers it needs (which hold no reference to their parents).
        model_ref = weakref.ref(self.model)
        chosen = {path: self._layers()[path] for path in layers}
        final = self._final_softmax_layer()
        logits_of = functools.partial(_logits_of, self.keras, final)
        cache = self._cache

        def capture(x: Any, indices: Any, mask: Any) -> Any:
            cache.traces += 1  # Python runs only while TensorFlow traces
            model = model_ref()
            if model is None:  # only a provider, which holds the model, calls this
                raise RuntimeError("the Keras model of this capture was garbage-collected")
            recorded: dict[str, Any] = {}

            def watch(path: str, call: Callable[..., Any]) -> Callable[..., Any]:
                def watching_call(*args: Any, **kwargs: Any) -> Any:
                    output = call(*args, **kwargs)
                    if not tf.is_tensor(output):
                        raise LayerError(
                            f"layer {path!r} returns {type(output).__name__}, not a tensor; "
                            "choose a layer with a single tensor output"
                        )
                    tape.watch(output)
                    recorded[path] = output  # a layer called several times: its last call
                    return output

                return watching_call

            with tf.GradientTape(watch_accessed_variables=False) as tape:
                with _shadow_calls(chosen, watch), logits_of():
                    outputs = model(x, training=False)
                scores, chosen_indices = _score(target_key, outputs, indices, mask)
                total = tf.reduce_sum(scores)
            missing = [path for path in layers if path not in recorded]
            if missing:
                raise LayerError(
                    f"layer {missing[0]!r} was not called during the forward pass; choose a "
                    "layer that the model uses"
                )
            activations = [recorded[path] for path in layers]
            grads = tape.gradient(total, activations) if gradients else []
            if any(g is None for g in grads):
                raise LayerError(
                    f"the target score does not depend on layer {layers[0]!r}; choose a layer "
                    "on the path from the inputs to the scored output"
                )
            return activations, grads, outputs, scores, chosen_indices, final is not None

        return tf.function(capture)

    # -- forward passes without capture (perturbation methods, metrics) ---------------------

    def core_inputs(self, inputs: Any) -> np.ndarray:
        """The validated inputs as a channels-first ``(N, C, H, W)`` float32 numpy array."""
        return _channels_first(self._prepare(inputs).numpy())

    def native_inputs(self, x: np.ndarray) -> np.ndarray:
        """Channels-first inputs back in Keras' channels-last layout, for ``capture``."""
        return np.ascontiguousarray(np.moveaxis(np.asarray(x), 1, -1))

    def _compiled_forward(self, key: tuple[Any, ...], layer: str | None, target_key: Any) -> Any:
        """A cached ``tf.function`` of the forward pass and the target's scores; with ``layer``
        the layer's output is replaced by the ``replacement`` argument."""
        functions = self._cache.functions
        if key in functions:
            return functions[key]
        model_ref = weakref.ref(self.model)  # cached with the model: must not keep it alive
        chosen = {} if layer is None else {layer: self._layers()[layer]}
        logits_of = functools.partial(_logits_of, self.keras, self._final_softmax_layer())
        cache = self._cache

        def forward(x: Any, replacement: Any, indices: Any, mask: Any) -> Any:
            cache.traces += 1
            model = model_ref()
            if model is None:
                raise RuntimeError("the Keras model of this forward pass was garbage-collected")
            called: list[str] = []

            def replace(path: str, call: Callable[..., Any]) -> Callable[..., Any]:
                def replacing_call(*args: Any, **kwargs: Any) -> Any:
                    output = call(*args, **kwargs)
                    called.append(path)
                    return tf.cast(replacement, output.dtype)

                return replacing_call

            with _shadow_calls(chosen, replace), logits_of():
                outputs = model(tf.transpose(x, (0, 2, 3, 1)), training=False)
            if layer is not None and not called:
                raise LayerError(
                    f"layer {layer!r} was not called during the forward pass; choose a layer "
                    "that the model uses"
                )
            scores, chosen_indices = _score(target_key, outputs, indices, mask)
            return outputs, scores, chosen_indices

        functions[key] = tf.function(forward, reduce_retracing=True)
        return functions[key]

    def _run_forward(
        self, compiled: Any, x: Any, replacement: Any, target: Target, plan: TracedTarget
    ) -> ScoredTarget:
        outputs, scores, indices = self._forward(
            lambda: compiled(x, replacement, tf.constant(plan.indices), tf.constant(plan.mask)), x
        )
        validate_target(target, outputs.numpy(), channels_last=True)
        callable_target = plan.key[0] == "callable"
        return ScoredTarget(
            scores.numpy().astype(np.float32),
            None if callable_target else indices.numpy().astype(np.int64),
        )

    @staticmethod
    def _check_precision(precision: str) -> None:
        if precision != "float32":
            raise CapabilityError(
                f"precision={precision!r}: the tf backend runs a Keras model in the dtype policy "
                "it was built with; build it under keras.mixed_precision.set_global_policy("
                "'mixed_float16') for half-precision passes, and pass precision='float32'"
            )

    def forward_scores(self, x: np.ndarray, target: Target, *, precision: str) -> ScoredTarget:
        """The target's scores of a channels-first batch (as from ``core_inputs``), compiled."""
        self._check_precision(precision)
        plan = trace_target(target, int(x.shape[0]))
        compiled = self._compiled_forward(("forward", plan.key), None, plan.key)
        return self._run_forward(compiled, tf.constant(x), tf.zeros(()), target, plan)

    def forward_from_layer(
        self, x: np.ndarray, layer: str, activations: np.ndarray, target: Target,
        *, precision: str,
    ) -> ScoredTarget:  # fmt: skip
        """Scores of one sample ``x`` ``(1, ...)`` with ``layer``'s output replaced by each row
        of ``activations`` ``(B, ...)`` (at every call of the layer).

        The model runs on the one sample and the layer hands on the ``B`` replacements, so the
        prefix runs once; where a later layer cannot broadcast an earlier one-sample tensor
        (a concatenation) the model runs on ``B`` copies instead, remembered per model.
        """
        self._check_precision(precision)
        count = int(activations.shape[0])
        plan = trace_target(target, count)
        compiled = self._compiled_forward(("from_layer", layer, plan.key), layer, plan.key)
        replacement = tf.constant(
            np.moveaxis(activations, 1, -1) if activations.ndim == 4 else activations
        )
        if layer not in self._cache.repeats_prefix:
            try:
                scored = self._run_forward(compiled, tf.constant(x), replacement, target, plan)
                if scored.scores.shape[0] == count:
                    return scored
            except InputError:
                pass
            self._cache.repeats_prefix.add(layer)
        copies = tf.constant(np.repeat(x, count, axis=0))
        return self._run_forward(compiled, copies, replacement, target, plan)

    def _final_softmax_layer(self) -> Any | None:
        """The model's last layer if it applies a softmax that can be left out, else None."""
        layers = getattr(self.model, "layers", None)
        if not layers:
            return None
        last = layers[-1]
        softmax_layer = getattr(self.keras.layers, "Softmax", ())
        activation = getattr(last, "activation", None)
        if isinstance(last, softmax_layer) or getattr(activation, "__name__", "") == "softmax":
            return last
        return None

    @staticmethod
    def _warn_if_probabilities(outputs: np.ndarray) -> None:
        if outputs.ndim == 2 and outputs.shape[1] > 1 and outputs.min() >= 0:
            if np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3):
                warnings.warn(
                    "the model's outputs look like softmax probabilities and camkit could not "
                    "reach the logits (the softmax is not the model's last layer); gradients "
                    "of probabilities saturate, so return logits from the model, or pass "
                    "target=camkit.targets.SoftmaxTarget(...) to explain the probability",
                    UserWarning,
                    stacklevel=4,
                )

    # -- helpers --------------------------------------------------------------------------

    def _forward(self, run: Callable[[], Any], x: Any) -> Any:
        try:
            return run()
        except CamkitError:
            raise
        except (ValueError, TypeError, tf.errors.OpError) as error:
            raise InputError(
                f"{self.model.name!r} failed on inputs of shape {tuple(x.shape)} and dtype "
                f"{x.dtype.name}: {type(error).__name__}: {error}"
            ) from error

    def _prepare(self, inputs: Any) -> Any:
        if isinstance(inputs, np.ndarray) or tf.is_tensor(inputs):
            dtype = tf.as_dtype(inputs.dtype)
            if not dtype.is_floating:
                raise InputError(
                    f"inputs have dtype {dtype.name}; the model needs floating-point inputs, "
                    "scaled as in training"
                )
            if len(inputs.shape) != 4:
                raise InputError(
                    f"inputs have shape {tuple(inputs.shape)}; expected a channels-last batch "
                    "(N, H, W, C) — add a batch axis with inputs[None] for a single image"
                )
            return tf.convert_to_tensor(inputs, dtype=tf.float32)
        raise InputError(
            f"inputs must be a numpy array or a tf.Tensor, got {type(inputs).__qualname__}"
        )

    # -- the rest of the protocol ---------------------------------------------------------

    def classifier_weights(self, classifier: object | None = None) -> np.ndarray:
        """The ``(K, C)`` kernel of ``classifier``, or of the model's last Dense layer."""
        layers = self._layers()
        if classifier is None:
            dense = [p for p, layer in layers.items() if isinstance(layer, self.keras.layers.Dense)]
            if not dense:
                raise LayerError(
                    f"CAM needs a Dense classifier but {self.model.name!r} has none; pass "
                    "classifier= the layer holding the class weights"
                )
            classifier = dense[-1]
        path = self.resolve_layer(classifier)
        kernel = getattr(layers[path], "kernel", None)
        if kernel is None or len(kernel.shape) != 2:
            raise LayerError(f"classifier={path!r} has no (features, classes) kernel")
        return np.asarray(kernel, dtype=np.float32).T.copy()

    def input_size(self, inputs: Any) -> tuple[int, int]:
        return int(inputs.shape[1]), int(inputs.shape[2])

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def close(self) -> None:
        """Nothing to release: compiled captures are cached per model, weakly, and go with it."""
