"""The JAX provider: activations and ``dS/dA`` from Flax NNX, Flax Linen, Equinox or plain
function pairs, inside one compiled function.

How a call runs, and why:

- The model kind (``_kinds``) splits the model into a structure, its parameters and a pure
  ``run`` that intercepts chosen layers on a throwaway copy; the user's model is never edited.
- The traced capture (``_trace``) perturbs the layer's output by a zero ``delta`` and takes the
  gradient with respect to it, which is exactly ``dS/dA``.
- The whole pipeline (forward, gradient, the method's weights and map, resize, normalization)
  is one ``jax.jit`` function, cached by model structure, layers, target kind and method
  options (``_cache``); class indices and masks are its inputs, so a new class does not
  recompile. Arrays stay on the model's device; only the final maps come back as numpy.
- The model's inputs enter the compiled function as arrays; what else it is called with (a
  flag, a string) is part of the cache key and stays Python. Inputs are cast, inside the
  compiled function, to the floating dtype of the model's parameters (float64 under
  ``jax_enable_x64``); every call holds the model's lock.
- Flax and function pairs are channels-last, ``(N, H, W, C)``; Equinox takes one
  channels-first sample and is vmapped. Layers' outputs reach the core as the layer returns
  them; the layer table says their layout by the kind's convention.

Built from the public names of :mod:`camkit.provider` only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from camkit import provider as kit
from camkit.provider import (
    BIAS_GRADIENTS,
    FORWARD_FROM_LAYER,
    FORWARD_SCORES,
    FUSED_PIPELINE,
    INPUT_GRADIENTS,
    PARAMETER_RANDOMIZATION,
    BiasKind,
    Capture,
    FullGradients,
    GradientRule,
    InputError,
    LayerTable,
    ModelInputs,
    Pipeline,
    Precision,
    ScoredTarget,
    Target,
)

from . import _randomize
from ._backprop import Backward, backward
from ._biases import bias_layers, effective_biases, has_biases
from ._cache import compiled, trace_count
from ._kinds import FunctionKind, Layout, Run, layout_of, model_kind
from ._trace import Call, Captured, capture, forward, probe, replaced, vmapped

__all__ = ["JaxProvider", "trace_count"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _device_of(params: Any) -> Any:
    """The device the parameters live on (the first one's; ``None``, the default device, for
    a model without parameters or with parameters sharded over several devices)."""
    for leaf in jax.tree.leaves(params):
        if isinstance(leaf, jax.Array):
            devices = leaf.devices()
            return next(iter(devices)) if len(devices) == 1 else None
    return None


class _Mapped(NamedTuple):
    """What a compiled capture fused with a map pipeline returns."""

    cams: Any
    outputs: Any
    scores: Any
    indices: Any


class _Scored(NamedTuple):
    outputs: Any
    scores: Any
    indices: Any


class _Arguments(NamedTuple):
    """A model's inputs split for a compiled function: ``arrays`` (its inputs, in order), the
    hashable ``key`` of everything else, and ``call(arrays)`` rebuilding the call in a trace."""

    arrays: list[Any]
    key: Hashable
    call: Callable[[list[Any]], Call]


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray | jax.Array)


def _static(value: Any) -> Hashable:
    try:
        hash(value)
    except TypeError:
        return ("unhashable", id(value))
    return value


def _arguments(inputs: ModelInputs) -> _Arguments:
    args, kwargs = inputs.call_arguments()
    leaves, tree = jax.tree_util.tree_flatten((args, kwargs))
    arrays = [leaf for leaf in leaves if _is_array(leaf)]
    fixed = [None if _is_array(leaf) else leaf for leaf in leaves]

    def call(traced: list[Any]) -> Call:
        it = iter(traced)
        merged = [next(it) if _is_array(leaf) else leaf for leaf in leaves]
        rebuilt_args, rebuilt_kwargs = jax.tree_util.tree_unflatten(tree, merged)
        return Call(tuple(rebuilt_args), dict(rebuilt_kwargs), inputs.key)

    key = (tree, tuple(_static(value) for value in fixed), inputs.key)
    return _Arguments(arrays, key, call)


def _float_dtype(params: Any) -> Any:
    """The floating dtype of the model's parameters (float32 where it has none)."""
    for leaf in jax.tree_util.tree_leaves(params):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
            return dtype
    return jnp.float32


def _at_precision(params: Any, call: Call, precision: Precision) -> tuple[Any, Call]:
    """Parameters and the image cast to ``precision`` (floating leaves only); for float32, the
    image in the parameters' own dtype (the cast is free inside the compiled function)."""
    dtype = _DTYPES[precision]
    if dtype == jnp.float32:
        return params, call.with_image(call.image.astype(_float_dtype(params)))

    def cast(leaf: Any) -> Any:
        floating = isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating)
        return leaf.astype(dtype) if floating else leaf

    return jax.tree_util.tree_map(cast, params), call.with_image(call.image.astype(dtype))


class JaxProvider:
    """Captures activations and gradients of a JAX model inside one compiled function."""

    def __init__(self, model: Any) -> None:
        self.kind = model_kind(model)
        self.capabilities = (
            frozenset({FUSED_PIPELINE, FORWARD_SCORES, FORWARD_FROM_LAYER}) | self.kind.capabilities
        ) | {PARAMETER_RANDOMIZATION, INPUT_GRADIENTS}
        if has_biases(self.kind):
            self.capabilities |= {BIAS_GRADIENTS}
        self._lock = kit.model_lock(self.kind.owner)
        self._keys: list[Hashable] = []

    @property
    def traces(self) -> int:
        """How many times the compiled functions this provider used were traced."""
        return trace_count(self._keys)

    # -- layers ---------------------------------------------------------------------------

    def layer_names(self) -> list[str]:
        return list(self.kind.modules())

    def resolve_layer(self, layer: object) -> str:
        return kit.find_layer(layer, self.kind.modules(), self.kind.name)

    def layers(self, inputs: ModelInputs) -> LayerTable:
        self._prepare(inputs)
        return kit.layer_table(self.kind.owner, inputs.signature(), lambda: self._probe(inputs))

    def _probe(self, inputs: ModelInputs) -> LayerTable:
        """Trace the model once (no compute), recording every layer's output shape."""
        _, params, run = self.kind.split()
        split = _arguments(inputs)
        layout = self.kind.layout
        order: list[tuple[str, tuple[int, ...]]] = []

        def record(path: str, output: Any) -> Any:
            if isinstance(output, jax.Array):
                order.append((path, tuple(output.shape)))
            return output

        def shapes(arrays: list[Any]) -> Any:
            call = split.call(arrays)
            call = call.with_image(call.image.astype(_float_dtype(params)))
            return vmapped(
                layout, call, lambda one: run(params, one.args, one.kwargs, record, None)
            )

        with self._lock, self._running(inputs):
            jax.eval_shape(shapes, split.arrays)
        count = inputs.count
        rank = len(self.input_size(inputs))
        batched = [(path, (count, *shape) if layout.per_sample else shape) for path, shape in order]
        calls = [(path, shape, layout_of(layout, len(shape), rank)) for path, shape in batched]
        return LayerTable.of(calls, self.input_size(inputs))  # type: ignore[arg-type]

    # -- compiled functions ---------------------------------------------------------------

    def _compiled(
        self, name: tuple[Any, ...], build: Callable[[Run, Layout], Callable[..., Any]]
    ) -> tuple[Any, Any]:
        """The jitted ``build`` for this model's structure and ``name``, and the parameters
        to call it with."""
        split = self.kind.split()
        function, key = compiled(split, self.kind.layout, name, build)
        if key not in self._keys:
            self._keys.append(key)
        return function, split.params

    def _call(self, function: Any, params: Any, inputs: ModelInputs, *args: Any) -> Any:
        # Explicitly onto the parameters' device: host arrays (a target's indices, numpy
        # inputs) are transferred by intent, never implicitly (jax.transfer_guard allows that),
        # and inputs on another device follow the model rather than the default device.
        params, *placed = jax.device_put((params, *args), _device_of(params))
        with self._lock, self._running(inputs):
            return function(params, *placed)

    # -- capture --------------------------------------------------------------------------

    def _run(
        self, inputs: ModelInputs, layers: Sequence[str], target: Target, gradients: bool,
        pipeline: Pipeline | None, pipeline_key: Hashable,
    ) -> Any:  # fmt: skip
        self._prepare(inputs)
        count = inputs.count
        traced = kit.trace_target(target, count)
        split = _arguments(inputs)
        layers = tuple(layers)

        def build(run: Run, layout: Layout) -> Callable[..., Any]:
            def captured(params: Any, arrays: list[Any], data: dict[str, Any]) -> Any:
                call = split.call(arrays)
                call = call.with_image(call.image.astype(_float_dtype(params)))
                result = capture(layout, run, params, call, traced.bind(data), layers, gradients)
                if pipeline is None:
                    return result
                size = kit.image_size(tuple(call.image.shape), channels_last=layout.channels_last)
                cams = pipeline(Capture(*result), size)
                return _Mapped(cams, result.outputs, result.scores, result.indices)

            return captured

        name = ("capture", layers, traced.key, gradients, pipeline_key, split.key)
        function, params = self._compiled(name, build)
        result = self._call(function, params, inputs, split.arrays, traced.arrays)
        channels_last = self.kind.layout.channels_last
        kit.check_outputs(target, result.outputs, count, channels_last=channels_last)
        return result

    def capture(
        self, inputs: ModelInputs, layers: Sequence[str], target: Target, *, gradients: bool
    ) -> Capture:
        result: Captured = self._run(inputs, layers, target, gradients, None, None)
        return Capture(*result)

    def run_pipeline(
        self,
        inputs: ModelInputs,
        layers: Sequence[str],
        target: Target,
        *,
        gradients: bool,
        pipeline: Pipeline,
        key: Hashable,
    ) -> tuple[Any, Capture]:
        result: _Mapped = self._run(inputs, layers, target, gradients, pipeline, key)
        return result.cams, Capture((), None, result.outputs, result.scores, result.indices)

    # -- forward passes without capture (perturbation methods, metrics) ---------------------

    def core_inputs(self, inputs: ModelInputs) -> Any:
        """The validated image as a channels-first ``(N, C, *S)`` float32 array."""
        self._prepare(inputs)
        image = jax.device_put(inputs.image, _device_of(self.kind.split().params))
        image = image.astype(jnp.float32)
        return jnp.moveaxis(image, -1, 1) if self.kind.layout.channels_last else image

    def native_image(self, x: Any) -> Any:
        """A channels-first image back in the model's own layout."""
        return jnp.moveaxis(x, 1, -1) if self.kind.layout.channels_last else x

    def _scored(self, result: _Scored, target: Target, count: int) -> ScoredTarget:
        channels_last = self.kind.layout.channels_last
        kit.check_outputs(target, result.outputs, count, channels_last=channels_last)
        return ScoredTarget(result.scores, result.indices)

    def forward_scores(
        self, inputs: ModelInputs, target: Target, *, precision: Precision
    ) -> ScoredTarget:
        """The target's scores of ``inputs`` (the image as from ``native_image``), jitted."""
        self._prepare(inputs)
        count = inputs.count
        traced = kit.trace_target(target, count)
        split = _arguments(inputs)

        def build(run: Run, layout: Layout) -> Callable[..., Any]:
            def scores(params: Any, arrays: list[Any], data: dict[str, Any]) -> _Scored:
                params, call = _at_precision(params, split.call(arrays), precision)
                outputs = forward(layout, run, params, call, None, None, frozenset()).outputs
                scored = kit.score_outputs(
                    traced.bind(data), outputs, call.image.shape[0],
                    channels_last=layout.channels_last,
                )  # fmt: skip
                return _Scored(outputs, scored.scores, scored.indices)

            return scores

        name = ("forward", traced.key, precision, split.key)
        function, params = self._compiled(name, build)
        result = self._call(function, params, inputs, split.arrays, traced.arrays)
        return self._scored(result, target, count)

    def forward_from_layer(
        self, inputs: ModelInputs, layer: str, activations: Any, target: Target,
        *, precision: Precision,
    ) -> ScoredTarget:  # fmt: skip
        """Scores of one sample's ``inputs`` with ``layer``'s output (at its last call)
        replaced by each row of ``activations`` ``(B, ...)``.

        The replacements are ``vmap``-ped while the sample is not, so the network up to the
        layer runs once and only the rest runs ``B`` times.
        """
        self._prepare(inputs)
        count = int(activations.shape[0])
        traced = kit.trace_target(target, count)
        split = _arguments(inputs)

        def build(run: Run, layout: Layout) -> Callable[..., Any]:
            def scores(params: Any, arrays: list[Any], rows: Any, data: dict[str, Any]) -> _Scored:
                params, call = _at_precision(params, split.call(arrays), precision)
                calls = probe(layout, run, params, call, [layer]).calls
                sample = call.first() if layout.per_sample else call
                outputs = jax.vmap(
                    lambda row: replaced(layout, run, params, sample, layer, row, calls)
                )(rows)
                scored = kit.score_outputs(
                    traced.bind(data), outputs, rows.shape[0], channels_last=layout.channels_last
                )
                return _Scored(outputs, scored.scores, scored.indices)

            return scores

        name = ("from_layer", layer, traced.key, precision, split.key)
        function, params = self._compiled(name, build)
        result = self._call(function, params, inputs, split.arrays, activations, traced.arrays)
        return self._scored(result, target, count)

    # -- input-space gradients (guided backpropagation, FullGrad) ---------------------------

    def input_gradients(
        self, inputs: ModelInputs, target: Target, *, rule: GradientRule
    ) -> tuple[Any, ScoredTarget]:
        """``dS/dx`` of the image, channels-first ``(N, C, *S)`` float32, every ReLU passing
        gradients back by ``rule`` (``"guided"``: see :mod:`camkit_jax._guided`)."""
        result = self._backward(inputs, target, rule, (), {})
        return result.input_gradients, ScoredTarget(result.scores, result.indices)

    def bias_layers(self, inputs: ModelInputs) -> dict[str, BiasKind]:
        """The layers with a bias (see :mod:`camkit_jax._biases`) whose output is a feature
        map, in the model's order."""
        table = self.layers(inputs)  # checks the inputs first
        known = bias_layers(self.kind, lambda: self._probe(inputs), inputs.signature())
        return {
            row.name: known[row.name].kind
            for row in table
            if row.name in known and row.spatial is not None
            and row.layout in ("channels_first", "channels_last")
        }  # fmt: skip

    def bias_gradients(
        self, inputs: ModelInputs, layers: Sequence[str], target: Target
    ) -> FullGradients:
        """The image's gradient and ``b[c] * dS/dz`` of each of ``layers``, channels-first."""
        self._prepare(inputs)
        known = bias_layers(self.kind, lambda: self._probe(inputs), inputs.signature())
        biases = effective_biases(self.kind, {path: known[path] for path in layers})
        result = self._backward(inputs, target, "standard", tuple(layers), biases)
        scored = ScoredTarget(result.scores, result.indices)
        return FullGradients(result.input_gradients, result.bias_terms, scored)

    def _backward(
        self, inputs: ModelInputs, target: Target, rule: GradientRule, layers: tuple[str, ...],
        biases: dict[str, Any],
    ) -> Backward:  # fmt: skip
        self._prepare(inputs)
        count = inputs.count
        traced = kit.trace_target(target, count)
        split = _arguments(inputs)
        table = self.layers(inputs)
        channels_last = tuple(table[path].layout == "channels_last" for path in layers)

        def build(run: Run, layout: Layout) -> Callable[..., Any]:
            def backward_pass(
                params: Any, arrays: list[Any], data: dict[str, Any], biases: dict[str, Any]
            ) -> Backward:
                call = split.call(arrays)
                call = call.with_image(call.image.astype(_float_dtype(params)))
                return backward(
                    layout, run, params, call, traced.bind(data), rule, layers, channels_last,
                    biases,
                )  # fmt: skip

            return backward_pass

        name = ("backward", rule, layers, channels_last, traced.key, split.key)
        function, params = self._compiled(name, build)
        result: Backward = self._call(function, params, inputs, split.arrays, traced.arrays, biases)
        channels = self.kind.layout.channels_last
        kit.check_outputs(target, result.outputs, count, channels_last=channels)
        return result

    # -- helpers --------------------------------------------------------------------------

    def _size(self, image: Any) -> tuple[int, ...]:
        channels_last = self.kind.layout.channels_last
        return kit.image_size(tuple(image.shape), channels_last=channels_last)

    def _running(self, inputs: ModelInputs) -> contextlib.AbstractContextManager[None]:
        image = inputs.image
        channels_last = self.kind.layout.channels_last
        return kit.running_model(
            self.kind.name, tuple(image.shape), str(image.dtype), channels_last=channels_last
        )

    def _prepare(self, inputs: ModelInputs) -> None:
        """Check the image (a numpy or JAX array of signals, images or volumes)."""
        image = inputs.image
        if not _is_array(image):
            raise InputError(f"inputs must be a numpy or JAX array, got {type(image).__qualname__}")
        floating = bool(jnp.issubdtype(image.dtype, jnp.floating))
        channels_last = self.kind.layout.channels_last
        kit.check_image(
            tuple(image.shape), str(image.dtype), floating=floating, channels_last=channels_last
        )
        if isinstance(self.kind, FunctionKind) and inputs.key is not None:
            raise InputError(
                "a camkit_jax.FunctionSplit takes one array: its features(params, x); put the "
                "other inputs in params or in the functions"
            )

    # -- the rest of the protocol ---------------------------------------------------------

    def classifier_weights(self, classifier: object | None = None) -> Any:
        """The ``(K, C)`` weights of the model's last linear layer."""
        if classifier is not None:
            raise InputError(
                f"classifier={classifier!r}: the jax backend finds CAM's classifier itself "
                "(the model's last linear layer); pass no classifier="
            )
        return self.kind.classifier_weights()

    def parameter_layers(self, inputs: ModelInputs) -> list[str]:
        """The layers owning parameters, in forward order (``_randomize``)."""
        return _randomize.parameter_layers(self.kind, self.layers(inputs))

    def randomized(self, layers: Sequence[str], seed: int) -> object:
        """A new model with the parameters of ``layers`` re-drawn (``_randomize``)."""
        return _randomize.randomized(self.kind, layers, seed)

    def input_size(self, inputs: ModelInputs) -> tuple[int, ...]:
        return self._size(inputs.image)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def close(self) -> None:
        """Nothing to release: compiled functions live in a bounded, shared cache."""
