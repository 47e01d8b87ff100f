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
    BIAS_GRADIENTS,
    CLASSIFIER_WEIGHTS,
    FORWARD_FROM_LAYER,
    FORWARD_SCORES,
    INPUT_GRADIENTS,
    PARAMETER_RANDOMIZATION,
    BackendError,
    BiasKind,
    CapabilityError,
    Capture,
    FullGradients,
    GradientRule,
    InputError,
    LayerError,
    LayerTable,
    Layout,
    ModelError,
    ModelInputs,
    Precision,
    ScoredTarget,
    Target,
    TracedTarget,
)
from camkit.targets import ClassTarget

from . import _randomize
from ._backprop import bias_kind, check_all_guided, effective_bias, guided_relu, relu_routes
from ._namespace import TensorFlowNamespace
from ._substituted import Substituted

__all__ = ["KerasProvider"]

kit.register_namespace(tf.is_tensor, TensorFlowNamespace)

#: What TensorFlow says when a one-sample tensor meets a batch of ablated copies.
_BATCH_MISMATCH = re.compile(r"shape|dimension", re.IGNORECASE)


def _keras_module(model: Any) -> Any:
    root = type(model).__module__.split(".")[0]
    return importlib.import_module("tf_keras" if root == "tf_keras" else "keras")


@contextlib.contextmanager
def _shadow_calls(
    layers: Mapping[str, Any], wrap: Callable[[str, Any], Any], attribute: str = "call"
) -> Iterator[None]:
    """Shadow each layer's ``call`` (or another ``attribute``, such as its ``activation``) with
    ``wrap(path, original)`` and always restore it.

    ``object.__setattr__`` bypasses Keras' attribute tracking, so nothing is tracked and the
    instance dictionary is left exactly as it was.
    """
    shadowed: list[tuple[Any, bool, Any]] = []
    try:
        for path, layer in layers.items():
            own = attribute in vars(layer)
            original = getattr(layer, attribute)
            object.__setattr__(layer, attribute, wrap(path, original))
            shadowed.append((layer, own, original))
        yield
    finally:
        for layer, own, original in reversed(shadowed):
            if own:
                object.__setattr__(layer, attribute, original)
            else:
                object.__delattr__(layer, attribute)


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


def _keras_layout(
    layer: Any, given: Any, output: Any, known: Mapping[int, Layout], rank: int
) -> Layout | None:
    """The layout of a Keras ``layer``'s ``output`` as far as Keras says: its ``data_format``,
    a normalization's ``axis``, a layer acting on the last axis (``Dense``, ``LayerNorm``:
    channels-last, or tokens on ``(N, T, C)`` over an image), else the layout of the tensor it
    was given (an activation) or returns; ``None`` if none says."""
    own = getattr(layer, "data_format", None)
    if own in ("channels_first", "channels_last"):
        return own  # type: ignore[no-any-return]
    axis = getattr(layer, "axis", None)
    axis = axis[0] if isinstance(axis, list | tuple) and len(axis) == 1 else axis
    last_axis = type(layer).__name__ in ("Dense", "EinsumDense", "LayerNormalization")
    if isinstance(axis, int) and not last_axis and output.shape.rank == rank + 2:
        return "channels_first" if axis == 1 else "channels_last"
    on_last = last_axis or (isinstance(axis, int) and axis in (-1, output.shape.rank - 1))
    if on_last and output.shape.rank >= 3:
        return "tokens" if output.shape.rank == 3 and rank >= 2 else "channels_last"
    if given is not None and id(given) in known and given.shape == output.shape:
        return known[id(given)]
    return known.get(id(output))


def _first_tensor(value: Any) -> Any:
    if tf.is_tensor(value):
        return value
    if isinstance(value, list | tuple):
        return next((item for item in value if tf.is_tensor(item)), None)
    return None


def _host(structure: Any) -> Any:
    """Tensors, in any nesting, as numpy arrays."""
    return tf.nest.map_structure(lambda t: t.numpy() if tf.is_tensor(t) else t, structure)


class KerasProvider:
    """Captures activations and gradients of a Keras model running on TensorFlow."""

    capabilities = frozenset(
        {CLASSIFIER_WEIGHTS, FORWARD_SCORES, FORWARD_FROM_LAYER, INPUT_GRADIENTS, BIAS_GRADIENTS}
        | {PARAMETER_RANDOMIZATION}
    )

    def __init__(self, model: Any) -> None:
        # a Substituted model runs the user's model, under its lock, in a StatelessScope; what
        # is traced or learned of it is kept apart from the model's own (``self._owner``)
        self._substituted = model if isinstance(model, Substituted) else None
        self._owner: object = model
        model = model.model if isinstance(model, Substituted) else model
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
        self._cache = _CACHES.get(self._owner)
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

    def layers(self, inputs: ModelInputs) -> LayerTable:
        prepared = self._prepare(inputs)
        return kit.layer_table(self._owner, prepared.signature(), lambda: self._probe(prepared))

    def _probe(self, inputs: ModelInputs) -> LayerTable:
        """Run the model once, recording every layer's output shape and layout in order."""
        image = inputs.image
        rank = len(image.shape) - 2
        known: dict[int, Layout] = {id(image): "channels_last"}  # Keras takes NHWC inputs
        seen: list[Any] = [image]  # alive, so that no id is reused during the probe
        calls: list[tuple[str, tuple[int, ...], Layout | None]] = []
        layers = self._layers()

        def record(path: str, call: Callable[..., Any]) -> Callable[..., Any]:
            layer = layers[path]

            def recording_call(*args: Any, **kwargs: Any) -> Any:
                output = call(*args, **kwargs)
                tensor = _first_tensor(output)
                if tensor is not None:
                    layout = _keras_layout(layer, _first_tensor(args), tensor, known, rank)
                    if layout is not None:
                        known[id(tensor)] = layout
                        seen.append(tensor)
                    calls.append((path, tuple(tensor.shape), layout))
                return output

            return recording_call

        with self._lock, _shadow_calls(layers, record), self._running(inputs):
            self._call(self.model, inputs)
        # a feature map no layer vouches for is channels-last, Keras' convention, unless the
        # model also makes channels-first ones: then a guess could be wrong
        first = any(lay == "channels_first" and len(s) == rank + 2 for _, s, lay in calls)
        resolved = [
            (path, shape, layout or self._default_layout(len(shape), rank, first))
            for path, shape, layout in calls
        ]
        return LayerTable.of(resolved, self.input_size(inputs))

    @staticmethod
    def _default_layout(ndim: int, rank: int, channels_first: bool) -> Layout | None:
        if ndim == rank + 2:
            return None if channels_first else "channels_last"
        if ndim == 3 and rank >= 2:
            return "tokens"  # (N, T, C) in a model of images: a transformer's tokens
        return None

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

    def _scope(self) -> contextlib.AbstractContextManager[Any]:
        """Where a :class:`Substituted` model's variables read their new values (while a
        compiled function is traced), else nothing."""
        substituted = self._substituted
        return contextlib.nullcontext() if substituted is None else substituted.scope()

    @staticmethod
    def _arguments(inputs: ModelInputs) -> tuple[Any, dict[str, Any]]:
        """The model's input as Keras takes it (one array, a list, or a dict) and the keyword
        arguments of its call."""
        given = inputs.given
        structure = list(given) if isinstance(given, tuple) else given
        return structure, dict(inputs.forward_kwargs)

    @classmethod
    def _call(cls, model: Any, inputs: ModelInputs) -> Any:
        structure, kwargs = cls._arguments(inputs)
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
            self._warn_if_probabilities(host_outputs)

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
        logits_of = functools.partial(_logits_of, self.keras, final)

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
                with _shadow_calls(chosen, watch), logits_of():
                    outputs = model_ref()(structure, training=False, **kwargs)
                scored = kit.score_outputs(
                    traced.bind(arrays), outputs, image.shape[0], channels_last=True
                )
                # per score column: (K,), or () for one score per sample
                total = tf.reduce_sum(scored.scores, axis=0)
            missing = [path for path in layers if path not in recorded]
            if missing:
                raise LayerError(
                    f"layer {missing[0]!r} was not called during the forward pass; choose a "
                    "layer that the model uses"
                )
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
        logits_of = functools.partial(_logits_of, self.keras, self._final_softmax_layer())

        def forward(
            structure: Any, kwargs: dict[str, Any], replacement: Any, arrays: dict[str, Any]
        ) -> _Scored:
            called: list[str] = []

            def replace(path: str, call: Callable[..., Any]) -> Callable[..., Any]:
                def replacing_call(*args: Any, **call_kwargs: Any) -> Any:
                    output = call(*args, **call_kwargs)
                    called.append(path)
                    tensor = _first_tensor(output)
                    swapped = tf.cast(replacement, tensor.dtype)
                    if tf.is_tensor(output):
                        return swapped
                    items = list(output)
                    items[next(i for i, t in enumerate(items) if tf.is_tensor(t))] = swapped
                    return type(output)(items)

                return replacing_call

            with _shadow_calls(chosen, replace), logits_of():
                outputs = model_ref()(structure, training=False, **kwargs)
            if layer is not None and not called:
                raise LayerError(
                    f"layer {layer!r} was not called during the forward pass; choose a layer "
                    "that the model uses"
                )
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

    @staticmethod
    def _check_precision(precision: Precision) -> None:
        if precision != "float32":
            raise CapabilityError(
                f"precision={precision!r}: the tf backend runs a Keras model in the dtype policy "
                "it was built with; build it under keras.mixed_precision.set_global_policy("
                "'mixed_float16') for half-precision passes, and pass precision='float32'"
            )

    def forward_scores(
        self, inputs: ModelInputs, target: Target, *, precision: Precision
    ) -> ScoredTarget:
        """The target's scores of ``inputs`` (the image as from ``native_image``), compiled."""
        self._check_precision(precision)
        count = int(inputs.image.shape[0])
        return self._scored(("forward",), None, inputs, tf.zeros(()), target, count)

    def forward_from_layer(
        self, inputs: ModelInputs, layer: str, activations: np.ndarray, target: Target,
        *, precision: Precision,
    ) -> ScoredTarget:  # fmt: skip
        """Scores of one sample's ``inputs`` with ``layer``'s output replaced by each row of
        ``activations`` ``(B, ...)`` (at every call of the layer).

        The model runs on the one sample and the layer hands on the ``B`` replacements, so the
        prefix runs once; where a later layer cannot broadcast an earlier one-sample tensor
        (a concatenation) the model runs on ``B`` copies instead, remembered per model.
        """
        self._check_precision(precision)
        count = int(activations.shape[0])
        replacement = tf.constant(activations)
        name = ("from_layer", layer)
        if layer not in self._cache.repeats_prefix:
            try:
                scored = self._scored(name, layer, inputs, replacement, target, count)
                if scored.scores.shape[0] == count:
                    return scored
            except ModelError as error:
                if not _BATCH_MISMATCH.search(str(error.__cause__)):
                    raise
            self._cache.repeats_prefix.add(layer)
        image = np.asarray(inputs.image)
        copies = inputs.rows(np.zeros(count, np.int64), np.repeat(image, count, axis=0))
        return self._scored(name, layer, copies, replacement, target, count)

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

    # -- input-space gradients (guided backpropagation, FullGrad) ---------------------------

    def input_gradients(
        self, inputs: ModelInputs, target: Target, *, rule: GradientRule
    ) -> tuple[np.ndarray, ScoredTarget]:
        """``dS/dx`` of the image, channels-first ``(N, C, *S)`` float32, every ReLU passing
        gradients back by ``rule`` (``"guided"``: see :mod:`camkit_tf._backprop`)."""
        full = self._backward(inputs, target, rule, ())
        return full.input_gradients, full.scored

    def bias_layers(self, inputs: ModelInputs) -> dict[str, BiasKind]:
        """The layers with a bias on the channel axis of a feature map: convolutions, batch
        normalizations, and ``Dense`` layers applied to a feature map."""
        layers = self._layers()
        found: dict[str, BiasKind] = {}
        for row in self.layers(inputs):
            if row.spatial is None or row.layout not in ("channels_first", "channels_last"):
                continue
            channels = row.shape[1] if row.layout == "channels_first" else row.shape[-1]
            kind = bias_kind(self.keras, layers[row.name], channels)
            if kind is not None:
                found[row.name] = kind
        return found

    def bias_gradients(
        self, inputs: ModelInputs, layers: Sequence[str], target: Target
    ) -> FullGradients:
        """The image's gradient and ``b[c] * dS/dz`` of each of ``layers``, channels-first,
        ``z`` the layer's output before its activation."""
        return self._backward(inputs, target, "standard", tuple(layers))

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
        logits_of = functools.partial(_logits_of, keras, self._final_softmax_layer())

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
                with logits_of(), _shadow_calls(shadowed_activations, activation, "activation"):
                    with _shadow_calls(shadowed_calls, call):
                        outputs = model_ref()(structure, training=False, **kwargs)
                scored = kit.score_outputs(
                    traced.bind(arrays), outputs, image.shape[0], channels_last=True
                )
                total = tf.reduce_sum(scored.scores, axis=0)
            if rule == "guided":
                check_all_guided(tf.compat.v1.get_default_graph())
            missing = [path for path in layers if path not in recorded]
            if missing:
                raise LayerError(
                    f"layer {missing[0]!r} was not called during the forward pass; choose a "
                    "layer that the model uses"
                )
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
        if self._substituted is not None:
            with self._scope():
                kernel = kernel.value  # a Keras 3 variable's value in the scope: the new one
        return np.asarray(kernel, dtype=np.float32).T.copy()

    def parameter_layers(self, inputs: ModelInputs) -> list[str]:
        """The layers holding trainable variables themselves, in forward order
        (``_randomize``)."""
        return _randomize.parameter_layers(
            self.keras, self.model, self._layers(), self.layers(inputs)
        )

    def randomized(self, layers: Sequence[str], seed: int) -> Substituted:
        """The model with new values for the variables of ``layers`` (``_randomize``)."""
        return _randomize.randomized(
            self.keras, self.model, self._layers(), layers, seed, self._substituted, self._name
        )

    def input_size(self, inputs: ModelInputs) -> tuple[int, ...]:
        return kit.image_size(tuple(inputs.image.shape), channels_last=True)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def close(self) -> None:
        """Nothing to release: compiled functions are cached per model, weakly, and go with it."""
