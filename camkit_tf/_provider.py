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
  layer outputs only; the tape watches no variables. ``K`` scores per sample ``(N, K)`` take
  the Jacobian of the ``K`` column sums from the one forward, vectorized by ``pfor``.
- Activations and gradients reach the core as numpy arrays (TensorFlow has no Array API
  namespace) laid out as the layer returns them; the layer table says how (a layer's
  ``data_format`` or ``axis``, Keras' channels-last convention, tokens for ``(N, T, C)`` over
  images) and the core reads every layout the same way for every backend.
- Models with several inputs are called as Keras takes them: a list for a tuple of inputs, a
  dict for keyword inputs, and ``forward_kwargs`` as keyword arguments.
- A model whose last layer applies a softmax is explained on its logits: while tracing, that
  layer's softmax is left out. Where the softmax is out of reach and the outputs look like
  probabilities, a warning says so.

Built from the public names of :mod:`camkit.provider` only.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from camkit import provider as kit
from camkit.provider import (
    BIAS_GRADIENTS,
    CLASSIFIER_WEIGHTS,
    FORWARD_FROM_LAYER,
    FORWARD_SCORES,
    INPUT_GRADIENTS,
    PARAMETER_RANDOMIZATION,
    BackendError,
    Capture,
    FullGradients,
    GradientRule,
    InputError,
    LayerError,
    LayerTable,
    ModelInputs,
    Precision,
    ScoredTarget,
    Target,
    TracedTarget,
)
from camkit.targets import ClassTarget
from camkit_keras import Substituted
from camkit_keras._base import KerasProviderBase
from camkit_keras._layers import (
    classifier_kernel,
    first_tensor,
    layer_calls,
    logits_of,
    not_called,
    shadow_calls,
    warn_if_probabilities,
    with_first_tensor,
)

from ._backprop import check_all_guided, effective_bias, guided_relu, relu_routes
from ._namespace import TensorFlowNamespace

__all__ = ["KerasProvider"]

kit.register_namespace(tf.is_tensor, TensorFlowNamespace)


def _keras_module(model: Any) -> Any:
    root = type(model).__module__.split(".")[0]
    return importlib.import_module("tf_keras" if root == "tf_keras" else "keras")


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


def _gradients(tape: tf.GradientTape, total: Any, activations: list[Any]) -> list[Any]:
    """``d total / dA`` for each activation; for ``K`` totals (one per score column), each
    ``(N, K, ...)``, the ``K`` rows of one Jacobian that ``pfor`` vectorizes over the single
    forward pass (falling back to a loop for ops it cannot vectorize)."""
    if total.shape.rank == 0:
        return tape.gradient(total, activations)
    jacobians = tape.jacobian(total, activations, experimental_use_pfor=True)  # (K, N, ...)
    return [
        None if j is None else tf.transpose(j, (1, 0, *range(2, j.shape.rank))) for j in jacobians
    ]


class _Scored(NamedTuple):
    outputs: Any
    scores: Any
    indices: Any


class _Backward(NamedTuple):
    """What a compiled backward pass to the image returns (see :class:`FullGradients`)."""

    input_gradients: Any
    bias_terms: list[Any]
    outputs: Any
    scores: Any
    indices: Any


def _last_axis_to(x: tf.Tensor, axis: int) -> tf.Tensor:
    """``x`` with its last axis moved to ``axis`` (a channels-last map made channels-first)."""
    rank = x.shape.rank
    return tf.transpose(x, (*range(axis), rank - 1, *range(axis, rank - 1)))


def _first_tensor(value: Any) -> Any:
    return first_tensor(value, tf.is_tensor)


def _host(structure: Any) -> Any:
    """Tensors, in any nesting, as numpy arrays."""
    return tf.nest.map_structure(lambda t: t.numpy() if tf.is_tensor(t) else t, structure)


class KerasProvider(KerasProviderBase):
    """Captures activations and gradients of a Keras model running on TensorFlow."""

    capabilities = frozenset(
        {CLASSIFIER_WEIGHTS, FORWARD_SCORES, FORWARD_FROM_LAYER, INPUT_GRADIENTS, BIAS_GRADIENTS}
        | {PARAMETER_RANDOMIZATION}
    )

    name = "tf"

    def __init__(self, model: Any) -> None:
        inner = model.model if isinstance(model, Substituted) else model
        keras = _keras_module(inner)
        super().__init__(model, keras)
        backend = keras.backend.backend() if hasattr(keras.backend, "backend") else "tensorflow"
        if backend != "tensorflow":
            raise BackendError(
                f"this Keras model runs on the {backend!r} Keras backend, and the tf backend "
                "explains Keras models through TensorFlow: leave backend= out (camkit's keras "
                "backend explains it on its own backend), or set KERAS_BACKEND=tensorflow "
                "before importing keras"
            )
        self._cache = _CACHES.get(self._owner)
        self._lock = kit.model_lock(model)

    @property
    def traces(self) -> int:
        """How many times this model's compiled functions were traced, for tests."""
        return self._cache.compiled.traces()

    # -- layers ---------------------------------------------------------------------------

    def layers(self, inputs: ModelInputs) -> LayerTable:
        prepared = self._prepare(inputs)
        return kit.layer_table(self._owner, prepared.signature(), lambda: self._probe(prepared))

    def _probe(self, inputs: ModelInputs) -> LayerTable:
        """Run the model once, recording every layer's output shape and layout in order."""
        with self._lock, self._running(inputs):
            calls = layer_calls(
                self._layers(), inputs.image, tf.is_tensor, lambda: self._call(self.model, inputs)
            )
        return LayerTable.of(calls, self.input_size(inputs))

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

    def _run(self, compiled: Any, inputs: ModelInputs, *args: Any) -> Any:
        with self._lock, self._running(inputs), self._scope():
            return compiled(*self._arguments(inputs), *args)

    def _call(self, model: Any, inputs: ModelInputs) -> Any:
        structure, kwargs = self._arguments(inputs)
        return model(structure, training=False, **kwargs)

    @staticmethod
    def _arrays(traced: TracedTarget) -> dict[str, Any]:
        return {name: tf.constant(value) for name, value in traced.arrays.items()}

    # -- capture --------------------------------------------------------------------------

    def capture(
        self, inputs: ModelInputs, layers: Sequence[str], target: Target, *, gradients: bool
    ) -> Capture:
        prepared = self._prepare(inputs)
        count = prepared.count
        traced = kit.trace_target(target, count)
        key = ("capture", tuple(layers), traced.key, gradients, prepared.key)
        body = self._capture_body(tuple(layers), traced, gradients, prepared.key)
        compiled = self._compiled(key, body)
        captured: _Captured = self._run(compiled, prepared, self._arrays(traced))
        kit.check_outputs(target, captured.outputs, count, channels_last=True)
        host_outputs = _host(captured.outputs)
        if isinstance(target, ClassTarget) and not captured.softmax_reached:
            warn_if_probabilities(host_outputs)

        def to_core(arrays: list[Any]) -> tuple[np.ndarray, ...]:
            return tuple(np.asarray(a, np.float32) for a in _host(arrays))

        return Capture(
            activations=to_core(captured.activations),
            gradients=to_core(captured.gradients) if gradients else None,
            outputs=host_outputs,
            scores=captured.scores.numpy(),
            indices=None if captured.indices is None else captured.indices.numpy(),
        )

    def _capture_body(
        self, layers: tuple[str, ...], traced: TracedTarget, gradients: bool, key: Any
    ) -> Callable[..., _Captured]:
        # The body is cached with the model and must not keep it alive: it holds the model
        # weakly, and the layers it needs (which hold no reference to their parents).
        model_ref = self._model_ref()
        chosen = {path: self._layers()[path] for path in layers}
        final = self._final_softmax_layer()
        without_softmax = functools.partial(logits_of, self.keras, final)

        def capture(structure: Any, kwargs: dict[str, Any], arrays: dict[str, Any]) -> _Captured:
            recorded: dict[str, Any] = {}

            def watch(path: str, call: Callable[..., Any]) -> Callable[..., Any]:
                def watching_call(*args: Any, **call_kwargs: Any) -> Any:
                    output = call(*args, **call_kwargs)
                    tensor = _first_tensor(output)
                    if tensor is None:
                        raise LayerError(
                            f"layer {path!r} returns {type(output).__name__}, not a tensor; "
                            "choose a layer with a tensor output"
                        )
                    tape.watch(tensor)
                    recorded[path] = tensor  # a layer called several times: its last call
                    return output

                return watching_call

            image = structure if key is None else structure[key]
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                with shadow_calls(chosen, watch), without_softmax():
                    outputs = model_ref()(structure, training=False, **kwargs)
                scored = kit.score_outputs(
                    traced.bind(arrays), outputs, image.shape[0], channels_last=True
                )
                # per score column: (K,), or () for one score per sample
                total = tf.reduce_sum(scored.scores, axis=0)
            missing = [path for path in layers if path not in recorded]
            if missing:
                raise not_called(missing[0])
            activations = [recorded[path] for path in layers]
            grads = _gradients(tape, total, activations) if gradients else []
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

    def core_inputs(self, inputs: ModelInputs) -> np.ndarray:
        """The validated image as a channels-first ``(N, C, *S)`` float32 numpy array."""
        image = self._prepare(inputs).image.numpy()
        return np.ascontiguousarray(np.moveaxis(image, -1, 1))

    def native_image(self, x: np.ndarray) -> np.ndarray:
        """A channels-first image back in Keras' channels-last layout."""
        return np.ascontiguousarray(np.moveaxis(np.asarray(x), 1, -1))

    def _forward_body(
        self, layer: str | None, traced: TracedTarget, key: Any
    ) -> Callable[..., _Scored]:
        """A forward pass and the target's scores; with ``layer``, the layer's output (at every
        call) is replaced by the ``replacement`` argument."""
        model_ref = self._model_ref()
        chosen = {} if layer is None else {layer: self._layers()[layer]}
        without_softmax = functools.partial(logits_of, self.keras, self._final_softmax_layer())

        def forward(
            structure: Any, kwargs: dict[str, Any], replacement: Any, arrays: dict[str, Any]
        ) -> _Scored:
            called: list[str] = []

            def replace(path: str, call: Callable[..., Any]) -> Callable[..., Any]:
                def replacing_call(*args: Any, **call_kwargs: Any) -> Any:
                    output = call(*args, **call_kwargs)
                    called.append(path)
                    swapped = tf.cast(replacement, _first_tensor(output).dtype)
                    return with_first_tensor(output, swapped, tf.is_tensor)

                return replacing_call

            with shadow_calls(chosen, replace), without_softmax():
                outputs = model_ref()(structure, training=False, **kwargs)
            if layer is not None and not called:
                raise not_called(layer)
            image = structure if key is None else structure[key]
            count = replacement.shape[0] if layer is not None else image.shape[0]
            scored = kit.score_outputs(traced.bind(arrays), outputs, count, channels_last=True)
            return _Scored(outputs, scored.scores, scored.indices)

        return forward

    def _scored(
        self, name: Any, layer: str | None, inputs: ModelInputs, replacement: Any,
        target: Target, count: int,
    ) -> ScoredTarget:  # fmt: skip
        prepared = self._prepare(inputs)
        traced = kit.trace_target(target, count)
        compiled = self._compiled(
            (*name, traced.key, prepared.key),
            self._forward_body(layer, traced, prepared.key),
            reduce_retracing=True,
        )
        scored: _Scored = self._run(compiled, prepared, replacement, self._arrays(traced))
        kit.check_outputs(target, scored.outputs, count, channels_last=True)
        return ScoredTarget(
            scored.scores.numpy().astype(np.float32),
            None if scored.indices is None else scored.indices.numpy(),
        )

    def forward_scores(
        self, inputs: ModelInputs, target: Target, *, precision: Precision
    ) -> ScoredTarget:
        """The target's scores of ``inputs`` (the image as from ``native_image``), compiled."""
        self._check_precision(precision)
        count = int(inputs.image.shape[0])
        return self._scored(("forward",), None, inputs, tf.zeros(()), target, count)

    def _scored_with(
        self, inputs: ModelInputs, layer: str, replacement: Any, target: Target, count: int
    ) -> ScoredTarget:
        replacement = tf.constant(replacement)
        return self._scored(("from_layer", layer), layer, inputs, replacement, target, count)

    def _repeats_prefix(self) -> set[str]:
        return self._cache.repeats_prefix

    # -- input-space gradients (guided backpropagation, FullGrad) ---------------------------

    def _backward(
        self, inputs: ModelInputs, target: Target, rule: GradientRule, layers: tuple[str, ...]
    ) -> FullGradients:
        prepared = self._prepare(inputs)
        count = prepared.count
        traced = kit.trace_target(target, count)
        table = self.layers(prepared)
        channels_last = tuple(table[path].layout == "channels_last" for path in layers)
        key = ("backward", rule, layers, channels_last, traced.key, prepared.key)
        body = self._backward_body(rule, layers, channels_last, traced, prepared.key)
        result: _Backward = self._run(self._compiled(key, body), prepared, self._arrays(traced))
        kit.check_outputs(target, result.outputs, count, channels_last=True)
        indices = None if result.indices is None else result.indices.numpy()
        return FullGradients(
            result.input_gradients.numpy(),
            tuple(term.numpy() for term in result.bias_terms),
            ScoredTarget(result.scores.numpy(), indices),
        )

    def _backward_body(
        self, rule: GradientRule, layers: tuple[str, ...], channels_last: tuple[bool, ...],
        traced: TracedTarget, key: Any,
    ) -> Callable[..., _Backward]:  # fmt: skip
        """A forward pass with the image and the pre-activation outputs ``z`` of ``layers``
        watched, each ReLU guided if ``rule`` says, and the backward pass to them."""
        model_ref = self._model_ref()
        every = self._layers()
        keras = self.keras
        chosen = {path: every[path] for path in layers}
        guided_calls, guided_activations = (
            relu_routes(keras, every) if rule == "guided" else ({}, frozenset())
        )
        # a layer with an activation is watched at the activation's input: ``z``
        before_activation = frozenset(
            path for path, layer in chosen.items() if hasattr(layer, "activation")
        )
        shadowed_activations = {p: every[p] for p in guided_activations | before_activation}
        shadowed_calls = {p: every[p] for p in {*guided_calls, *layers} - before_activation}
        without_softmax = functools.partial(logits_of, keras, self._final_softmax_layer())

        def backward(structure: Any, kwargs: dict[str, Any], arrays: dict[str, Any]) -> _Backward:
            recorded: dict[str, Any] = {}

            def keep(path: str, tensor: Any) -> None:
                tape.watch(tensor)
                recorded[path] = tensor  # a layer called several times: its last call

            def activation(path: str, original: Callable[..., Any]) -> Callable[..., Any]:
                applied = guided_relu if path in guided_activations else original

                def shadowing_activation(z: Any) -> Any:
                    if path in before_activation:
                        keep(path, z)
                    return applied(z)

                return shadowing_activation

            def call(path: str, original: Callable[..., Any]) -> Callable[..., Any]:
                run = guided_calls.get(path, original)

                def shadowing_call(*args: Any, **call_kwargs: Any) -> Any:
                    output = run(*args, **call_kwargs)
                    if path in chosen and path not in before_activation:
                        keep(path, _first_tensor(output))
                    return output

                return shadowing_call

            image = structure if key is None else structure[key]
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(image)
                # the softmax left out first: a watched activation wraps what then remains
                with (
                    without_softmax(),
                    shadow_calls(shadowed_activations, activation, "activation"),
                ):
                    with shadow_calls(shadowed_calls, call):
                        outputs = model_ref()(structure, training=False, **kwargs)
                scored = kit.score_outputs(
                    traced.bind(arrays), outputs, image.shape[0], channels_last=True
                )
                total = tf.reduce_sum(scored.scores, axis=0)
            if rule == "guided":
                check_all_guided(tf.compat.v1.get_default_graph())
            missing = [path for path in layers if path not in recorded]
            if missing:
                raise not_called(missing[0])
            tensors = [image, *(recorded[path] for path in layers)]
            lead = tf.shape(scored.scores)
            grads = [
                tf.zeros(tf.concat([lead, tf.shape(t)[1:]], 0)) if g is None
                else tf.cast(g, tf.float32)
                for t, g in zip(tensors, _gradients(tape, total, tensors), strict=True)
            ]  # fmt: skip
            axis = scored.scores.shape.rank  # the channel axis, after batch and target axes
            terms = []
            for path, last, grad in zip(layers, channels_last, grads[1:], strict=True):
                bias = effective_bias(keras, chosen[path])
                grad = _last_axis_to(grad, axis) if last else grad
                terms.append(grad * tf.reshape(bias, (-1, *(1,) * (grad.shape.rank - axis - 1))))
            input_gradients = _last_axis_to(grads[0], axis)  # Keras images are channels-last
            return _Backward(input_gradients, terms, outputs, scored.scores, scored.indices)

        return backward

    # -- helpers --------------------------------------------------------------------------

    def _running(self, inputs: ModelInputs) -> contextlib.AbstractContextManager[None]:
        image = inputs.image
        return kit.running_model(
            self._name, tuple(image.shape), tf.as_dtype(image.dtype).name, channels_last=True
        )

    def _prepare(self, inputs: ModelInputs) -> ModelInputs:
        """The inputs with the image checked and a float32 tensor, every other array a
        tensor."""
        image = inputs.image
        if not (isinstance(image, np.ndarray) or tf.is_tensor(image)):
            raise InputError(
                f"inputs must be a numpy array or a tf.Tensor, got {type(image).__qualname__}"
            )
        dtype = tf.as_dtype(image.dtype)
        kit.check_image(
            tuple(image.shape), dtype.name, floating=dtype.is_floating, channels_last=True
        )
        converted = inputs.map_inputs(tf.convert_to_tensor)
        return converted.with_image(tf.cast(converted.image, tf.float32))

    # -- the rest of the protocol ---------------------------------------------------------

    def classifier_weights(self, classifier: object | None = None) -> np.ndarray:
        """The ``(K, C)`` kernel of ``classifier``, or of the model's last Dense layer."""
        kernel = classifier_kernel(self.keras, self._layers(), classifier, self._name)
        if self._substituted is not None:
            with self._scope():
                kernel = kernel.value  # a Keras 3 variable's value in the scope: the new one
        return np.asarray(kernel, dtype=np.float32).T.copy()

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def close(self) -> None:
        """Nothing to release: compiled functions are cached per model, weakly, and go with it."""
