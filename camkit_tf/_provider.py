"""The Keras provider: activations and ``dS/dA`` from a Keras model on TensorFlow.

How a capture runs, and why:

- No functional sub-model is built (that is what fails on nested and subclassed models with
  "Graph disconnected"). Instead the capture is a ``tf.function`` in which, while it is being
  traced, each chosen layer's ``call`` is shadowed by a wrapper that records its output and
  ``tape.watch``-es it. The wrapper is removed as soon as the trace ends: the compiled graph
  keeps the capture, the model keeps nothing. Tracing holds the model's lock, so another
  thread never sees a shadowed ``call``.
- The compiled capture is cached per model (weakly: the cache holds no model alive, and at most
  32 functions per model), layers, target kind and gradient need, so one-call
  ``camkit.explain`` reuses it too; TensorFlow reuses it for inputs of the same shape.
  ``traces`` counts traces, for tests.
- The target is scored by ``camkit.provider.score_outputs`` inside the graph, through a small
  TensorFlow shim of the Array API; its class indices and masks are inputs of the graph, so a
  new class does not retrace.
- Gradients come from ``GradientTape.gradient(sum_n S[n], A)`` with respect to the watched
  layer outputs only; the tape watches no variables.
- Keras is channels-last: activations ``(N, H, W, C)`` are handed to the core as
  ``(N, C, H, W)`` numpy arrays (TensorFlow has no Array API namespace), so every method is the
  same code as for PyTorch.
- A model whose last layer applies a softmax is explained on its logits: while tracing, that
  layer's softmax is left out. Where the softmax is out of reach and the outputs look like
  probabilities, a warning says so.

Built from the public names of :mod:`camkit.provider` only.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import re
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from camkit import provider as kit
from camkit.provider import (
    CLASSIFIER_WEIGHTS,
    FORWARD_FROM_LAYER,
    FORWARD_SCORES,
    BackendError,
    CapabilityError,
    Capture,
    InputError,
    LayerError,
    ModelError,
    Precision,
    ScoredTarget,
    Target,
    TracedTarget,
)
from camkit.targets import ClassTarget

from ._namespace import TensorFlowNamespace

__all__ = ["KerasProvider"]

kit.register_namespace(tf.is_tensor, TensorFlowNamespace)

#: What TensorFlow says when a one-sample tensor meets a batch of ablated copies.
_BATCH_MISMATCH = re.compile(r"shape|dimension", re.IGNORECASE)


def _keras_module(model: Any) -> Any:
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
    """The compiled functions of one model, and its layers whose prefix cannot broadcast."""

    compiled: kit.CompiledCache[Any] = field(default_factory=kit.CompiledCache)
    repeats_prefix: set[str] = field(default_factory=set)


_CACHES: kit.ModelTable[_ModelCache] = kit.ModelTable(_ModelCache)


class _Body:
    """A ``tf.function`` body as an object of its own, counting its traces.

    TensorFlow's frequent-retracing detector keys on the body's code object, which every
    closure of one Python function shares: a sweep over five layers (five functions, each
    traced once) would be reported as retracing. An object without ``__code__`` is its own key,
    so the warning keeps its meaning: one function traced again and again.
    """

    def __init__(self, body: Callable[..., Any], traced: Callable[[], None]) -> None:
        self.body = body
        self.traced = traced

    def __call__(self, *args: Any) -> Any:
        self.traced()  # Python runs only while TensorFlow traces
        return self.body(*args)


class _Captured(NamedTuple):
    activations: list[Any]
    gradients: list[Any]
    outputs: Any
    scores: Any
    indices: Any
    softmax_reached: bool


class _Scored(NamedTuple):
    outputs: Any
    scores: Any
    indices: Any


def _is_feature_map(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and shape[1] * shape[2] > 1  # (N, H, W, C)


def _channels_first(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(array, -1, 1)) if array.ndim == 4 else array


def _host(structure: Any) -> Any:
    """Tensors, in any nesting, as numpy arrays."""
    return tf.nest.map_structure(lambda t: t.numpy() if tf.is_tensor(t) else t, structure)


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
        self._name = repr(model.name)
        self._cache = _CACHES.get(model)
        self._lock = kit.model_lock(model)

    @property
    def traces(self) -> int:
        """How many times this model's compiled functions were traced, for tests."""
        return self._cache.compiled.traces()

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
        return kit.find_layer(layer, self._layers(), self._name, separator="/")

    def default_layer(self, inputs: Any) -> str:
        x = self._prepare(inputs)
        return kit.automatic_layer(self.model, tuple(x.shape), lambda: self._probe(x))

    def _probe(self, x: Any) -> str:
        """Run the model once, recording every layer's output shape in call order."""
        calls: list[tuple[str, tuple[int, ...]]] = []

        def record(path: str, call: Callable[..., Any]) -> Callable[..., Any]:
            def recording_call(*args: Any, **kwargs: Any) -> Any:
                output = call(*args, **kwargs)
                if tf.is_tensor(output):
                    calls.append((path, tuple(output.shape)))
                return output

            return recording_call

        with self._lock, _shadow_calls(self._layers(), record), self._running(x):
            self.model(x, training=False)
        return kit.last_spatial_layer(calls, _is_feature_map, self._name, tuple(x.shape))

    # -- compiled functions ---------------------------------------------------------------

    def _compiled(self, key: Any, body: Callable[..., Any], **options: Any) -> Any:
        """The cached ``tf.function`` of ``body`` under ``key``."""
        return self._cache.compiled.get(
            key, lambda traced: tf.function(_Body(body, traced), autograph=False, **options)
        )

    def _model_ref(self) -> Callable[[], Any]:
        """A weak reference to the model, for compiled functions cached with it."""
        reference = weakref.ref(self.model)

        def model() -> Any:
            found = reference()
            if found is None:  # only a provider, which holds the model, calls a compiled body
                raise RuntimeError("the Keras model of this compiled function was collected")
            return found

        return model

    def _run(self, compiled: Any, x: Any, *args: Any) -> Any:
        with self._lock, self._running(x):
            return compiled(x, *args)

    @staticmethod
    def _arrays(traced: TracedTarget) -> dict[str, Any]:
        return {name: tf.constant(value) for name, value in traced.arrays.items()}

    # -- capture --------------------------------------------------------------------------

    def capture(
        self, inputs: Any, layers: Sequence[str], target: Target, *, gradients: bool
    ) -> Capture:
        x = self._prepare(inputs)
        count = int(x.shape[0])
        traced = kit.trace_target(target, count)
        key = ("capture", tuple(layers), traced.key, gradients)
        body = self._capture_body(tuple(layers), traced, gradients)
        captured: _Captured = self._run(self._compiled(key, body), x, self._arrays(traced))
        kit.check_outputs(target, captured.outputs, count, channels_last=True)
        host_outputs = _host(captured.outputs)
        if isinstance(target, ClassTarget) and not captured.softmax_reached:
            self._warn_if_probabilities(host_outputs)

        def to_core(arrays: list[Any]) -> tuple[np.ndarray, ...]:
            return tuple(_channels_first(np.asarray(a, np.float32)) for a in _host(arrays))

        return Capture(
            activations=to_core(captured.activations),
            gradients=to_core(captured.gradients) if gradients else None,
            outputs=host_outputs,
            scores=captured.scores.numpy(),
            indices=None if captured.indices is None else captured.indices.numpy(),
        )

    def _capture_body(
        self, layers: tuple[str, ...], traced: TracedTarget, gradients: bool
    ) -> Callable[..., _Captured]:
        # The body is cached with the model and must not keep it alive: it holds the model
        # weakly, and the layers it needs (which hold no reference to their parents).
        model_ref = self._model_ref()
        chosen = {path: self._layers()[path] for path in layers}
        final = self._final_softmax_layer()
        logits_of = functools.partial(_logits_of, self.keras, final)

        def capture(x: Any, arrays: dict[str, Any]) -> _Captured:
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
                    outputs = model_ref()(x, training=False)
                scored = kit.score_outputs(
                    traced.bind(arrays), outputs, x.shape[0], channels_last=True
                )
                total = tf.reduce_sum(scored.scores)
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
            return _Captured(
                activations, grads, outputs, scored.scores, scored.indices, final is not None
            )

        return capture

    # -- forward passes without capture (perturbation methods, metrics) ---------------------

    def core_inputs(self, inputs: Any) -> np.ndarray:
        """The validated inputs as a channels-first ``(N, C, H, W)`` float32 numpy array."""
        return _channels_first(self._prepare(inputs).numpy())

    def native_inputs(self, x: np.ndarray) -> np.ndarray:
        """Channels-first inputs back in Keras' channels-last layout, for ``capture``."""
        return np.ascontiguousarray(np.moveaxis(np.asarray(x), 1, -1))

    def _forward_body(self, layer: str | None, traced: TracedTarget) -> Callable[..., _Scored]:
        """A forward pass on channels-first inputs and the target's scores; with ``layer``, the
        layer's output (at every call) is replaced by the ``replacement`` argument."""
        model_ref = self._model_ref()
        chosen = {} if layer is None else {layer: self._layers()[layer]}
        logits_of = functools.partial(_logits_of, self.keras, self._final_softmax_layer())

        def forward(x: Any, replacement: Any, arrays: dict[str, Any]) -> _Scored:
            called: list[str] = []

            def replace(path: str, call: Callable[..., Any]) -> Callable[..., Any]:
                def replacing_call(*args: Any, **kwargs: Any) -> Any:
                    output = call(*args, **kwargs)
                    called.append(path)
                    return tf.cast(replacement, output.dtype)

                return replacing_call

            with _shadow_calls(chosen, replace), logits_of():
                outputs = model_ref()(tf.transpose(x, (0, 2, 3, 1)), training=False)
            if layer is not None and not called:
                raise LayerError(
                    f"layer {layer!r} was not called during the forward pass; choose a layer "
                    "that the model uses"
                )
            count = replacement.shape[0] if layer is not None else x.shape[0]
            scored = kit.score_outputs(traced.bind(arrays), outputs, count, channels_last=True)
            return _Scored(outputs, scored.scores, scored.indices)

        return forward

    def _scored(
        self, key: Any, layer: str | None, x: Any, replacement: Any, target: Target, count: int
    ) -> ScoredTarget:
        traced = kit.trace_target(target, count)
        compiled = self._compiled(
            (*key, traced.key), self._forward_body(layer, traced), reduce_retracing=True
        )
        scored: _Scored = self._run(compiled, tf.constant(x), replacement, self._arrays(traced))
        kit.check_outputs(target, scored.outputs, count, channels_last=True)
        return ScoredTarget(
            scored.scores.numpy().astype(np.float32),
            None if scored.indices is None else scored.indices.numpy(),
        )

    @staticmethod
    def _check_precision(precision: Precision) -> None:
        if precision != "float32":
            raise CapabilityError(
                f"precision={precision!r}: the tf backend runs a Keras model in the dtype policy "
                "it was built with; build it under keras.mixed_precision.set_global_policy("
                "'mixed_float16') for half-precision passes, and pass precision='float32'"
            )

    def forward_scores(
        self, x: np.ndarray, target: Target, *, precision: Precision
    ) -> ScoredTarget:
        """The target's scores of a channels-first batch (as from ``core_inputs``), compiled."""
        self._check_precision(precision)
        return self._scored(("forward",), None, x, tf.zeros(()), target, int(x.shape[0]))

    def forward_from_layer(
        self, x: np.ndarray, layer: str, activations: np.ndarray, target: Target,
        *, precision: Precision,
    ) -> ScoredTarget:  # fmt: skip
        """Scores of one sample ``x`` ``(1, ...)`` with ``layer``'s output replaced by each row
        of ``activations`` ``(B, ...)`` (at every call of the layer).

        The model runs on the one sample and the layer hands on the ``B`` replacements, so the
        prefix runs once; where a later layer cannot broadcast an earlier one-sample tensor
        (a concatenation) the model runs on ``B`` copies instead, remembered per model.
        """
        self._check_precision(precision)
        count = int(activations.shape[0])
        replacement = tf.constant(
            np.moveaxis(activations, 1, -1) if activations.ndim == 4 else activations
        )
        key = ("from_layer", layer)
        if layer not in self._cache.repeats_prefix:
            try:
                scored = self._scored(key, layer, x, replacement, target, count)
                if scored.scores.shape[0] == count:
                    return scored
            except ModelError as error:
                if not _BATCH_MISMATCH.search(str(error.__cause__)):
                    raise
            self._cache.repeats_prefix.add(layer)
        copies = np.repeat(x, count, axis=0)
        return self._scored(key, layer, copies, replacement, target, count)

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
    def _warn_if_probabilities(outputs: Any) -> None:
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
                    stacklevel=4,
                )

    # -- helpers --------------------------------------------------------------------------

    def _running(self, x: Any) -> contextlib.AbstractContextManager[None]:
        return kit.running_model(
            self._name, tuple(x.shape), tf.as_dtype(x.dtype).name, channels_last=True
        )

    def _prepare(self, inputs: Any) -> Any:
        if isinstance(inputs, np.ndarray) or tf.is_tensor(inputs):
            dtype = tf.as_dtype(inputs.dtype)
            kit.check_batch(
                tuple(inputs.shape), dtype.name, floating=dtype.is_floating,
                expected="(N, H, W, C), channels-last",
            )  # fmt: skip
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
                    f"CAM needs a Dense classifier but {self._name} has none; pass classifier= "
                    "the layer holding the class weights"
                )
            classifier = dense[-1]
        path = kit.find_layer(classifier, layers, self._name, separator="/", argument="classifier")
        kernel = getattr(layers[path], "kernel", None)
        if kernel is None or len(kernel.shape) != 2:
            raise LayerError(f"classifier={path!r} has no (features, classes) kernel")
        return np.asarray(kernel, dtype=np.float32).T.copy()

    def input_size(self, inputs: Any) -> tuple[int, int]:
        return int(inputs.shape[1]), int(inputs.shape[2])

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def close(self) -> None:
        """Nothing to release: compiled functions are cached per model, weakly, and go with it."""
