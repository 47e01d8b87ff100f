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
- Flax and function pairs are channels-last, ``(N, H, W, C)``; Equinox takes one
  channels-first image ``(C, H, W)`` and is vmapped. Activations reach the core as
  ``(N, C, H, W)``.
- Inputs are cast, inside the compiled function, to the floating dtype of the model's
  parameters (float64 under ``jax_enable_x64``); every call holds the model's lock.

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
    FORWARD_FROM_LAYER,
    FORWARD_SCORES,
    FUSED_PIPELINE,
    Batch,
    Capture,
    InputError,
    Pipeline,
    Precision,
    ScoredTarget,
    Target,
)

from ._cache import compiled, trace_count
from ._kinds import Layout, Run, model_kind
from ._trace import Captured, capture, forward, probe, replaced

__all__ = ["JaxProvider", "trace_count"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


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


def _model_inputs(params: Any, x: Any) -> Any:
    """Inputs in the floating dtype of the model's parameters (float64 under x64), inside the
    compiled function, where the cast is free."""
    for leaf in jax.tree_util.tree_leaves(params):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
            return x.astype(dtype)
    return x


def _at_precision(params: Any, x: Any, precision: Precision) -> tuple[Any, Any]:
    """Parameters and inputs cast to ``precision`` (floating leaves only); for float32, the
    inputs in the parameters' own dtype."""
    dtype = _DTYPES[precision]
    if dtype == jnp.float32:
        return params, _model_inputs(params, x)

    def cast(leaf: Any) -> Any:
        floating = isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating)
        return leaf.astype(dtype) if floating else leaf

    return jax.tree_util.tree_map(cast, params), x.astype(dtype)


def _native(x: Any, layout: Layout) -> Any:
    """Channels-first core arrays ``(N, C, H, W)`` in the model's own layout."""
    return jnp.transpose(x, (0, 2, 3, 1)) if layout.channels_last and x.ndim == 4 else x


def _input_size(inputs: Any, layout: Layout) -> tuple[int, int]:
    if layout.channels_last:
        return int(inputs.shape[1]), int(inputs.shape[2])
    return int(inputs.shape[2]), int(inputs.shape[3])


class JaxProvider:
    """Captures activations and gradients of a JAX model inside one compiled function."""

    def __init__(self, model: Any) -> None:
        self.kind = model_kind(model)
        self.capabilities = (
            frozenset({FUSED_PIPELINE, FORWARD_SCORES, FORWARD_FROM_LAYER}) | self.kind.capabilities
        )
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

    def default_layer(self, inputs: Any) -> str:
        x = self._prepare(inputs)
        return kit.automatic_layer(self.kind.owner, tuple(x.shape), lambda: self._probe(x))

    def _probe(self, x: Any) -> str:
        """Trace the model once (no compute), recording every layer's output shape."""
        _, params, run = self.kind.split()
        order: list[tuple[str, tuple[int, ...]]] = []

        def record(path: str, output: Any) -> Any:
            if isinstance(output, jax.Array):
                order.append((path, tuple(output.shape)))
            return output

        def shapes() -> Any:
            inputs = _model_inputs(params, x)
            if self.kind.layout.per_sample:
                return jax.vmap(lambda sample: run(params, sample, record, None))(inputs)
            return run(params, inputs, record, None)

        with self._lock, self._running(x):
            jax.eval_shape(shapes)
        return kit.last_spatial_layer(order, self.kind.is_spatial, self.kind.name, tuple(x.shape))

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

    def _call(self, function: Any, params: Any, x: Any, *args: Any) -> Any:
        with self._lock, self._running(x):
            return function(params, x, *args)

    # -- capture --------------------------------------------------------------------------

    def _run(
        self, inputs: Any, layers: Sequence[str], target: Target, gradients: bool,
        pipeline: Pipeline | None, pipeline_key: Hashable,
    ) -> Any:  # fmt: skip
        x = self._prepare(inputs)
        count = int(x.shape[0])
        traced = kit.trace_target(target, count)
        layers = tuple(layers)

        def build(run: Run, layout: Layout) -> Callable[..., Any]:
            def captured(params: Any, x: Any, arrays: dict[str, Any]) -> Any:
                bound = traced.bind(arrays)
                x = _model_inputs(params, x)
                result = capture(layout, run, params, x, bound, layers, gradients)
                if pipeline is None:
                    return result
                batch = Batch(_input_size(x, layout))
                cams = pipeline(Capture(*result), batch)
                return _Mapped(cams, result.outputs, result.scores, result.indices)

            return captured

        name = ("capture", layers, traced.key, gradients, pipeline_key)
        function, params = self._compiled(name, build)
        result = self._call(function, params, x, traced.arrays)
        channels_last = self.kind.layout.channels_last
        kit.check_outputs(target, result.outputs, count, channels_last=channels_last)
        return result

    def capture(
        self, inputs: Any, layers: Sequence[str], target: Target, *, gradients: bool
    ) -> Capture:
        result: Captured = self._run(inputs, layers, target, gradients, None, None)
        return Capture(*result)

    def run_pipeline(
        self,
        inputs: Any,
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

    def core_inputs(self, inputs: Any) -> Any:
        """The validated inputs as a channels-first ``(N, C, H, W)`` float32 array."""
        x = self._prepare(inputs).astype(jnp.float32)
        return jnp.transpose(x, (0, 3, 1, 2)) if self.kind.layout.channels_last else x

    def native_inputs(self, x: Any) -> Any:
        """Channels-first inputs back in the model's own layout, for ``capture``."""
        return _native(x, self.kind.layout)

    def _scored(self, result: _Scored, target: Target, count: int) -> ScoredTarget:
        channels_last = self.kind.layout.channels_last
        kit.check_outputs(target, result.outputs, count, channels_last=channels_last)
        return ScoredTarget(result.scores, result.indices)

    def forward_scores(self, x: Any, target: Target, *, precision: Precision) -> ScoredTarget:
        """The target's scores of a channels-first batch (as from ``core_inputs``), jitted."""
        count = int(x.shape[0])
        traced = kit.trace_target(target, count)

        def build(run: Run, layout: Layout) -> Callable[..., Any]:
            def scores(params: Any, x: Any, arrays: dict[str, Any]) -> _Scored:
                params, x = _at_precision(params, x, precision)
                outputs = forward(layout, run, params, _native(x, layout), None, None,
                                  frozenset()).outputs  # fmt: skip
                scored = kit.score_outputs(
                    traced.bind(arrays), outputs, x.shape[0], channels_last=layout.channels_last
                )
                return _Scored(outputs, scored.scores, scored.indices)

            return scores

        function, params = self._compiled(("forward", traced.key, precision), build)
        return self._scored(self._call(function, params, x, traced.arrays), target, count)

    def forward_from_layer(
        self, x: Any, layer: str, activations: Any, target: Target, *, precision: Precision
    ) -> ScoredTarget:
        """Scores of one sample ``x`` ``(1, ...)`` with ``layer``'s output (at its last call)
        replaced by each row of ``activations`` ``(B, ...)``.

        The replacements are ``vmap``-ped while the sample is not, so the network up to the
        layer runs once and only the rest runs ``B`` times.
        """
        count = int(activations.shape[0])
        traced = kit.trace_target(target, count)

        def build(run: Run, layout: Layout) -> Callable[..., Any]:
            def scores(params: Any, x: Any, rows: Any, arrays: dict[str, Any]) -> _Scored:
                params, x = _at_precision(params, x, precision)
                native, rows = _native(x, layout), _native(rows, layout)
                sample = native[0] if layout.per_sample else native
                calls = probe(layout, run, params, native, [layer]).calls
                outputs = jax.vmap(
                    lambda row: replaced(layout, run, params, sample, layer, row, calls)
                )(rows)
                scored = kit.score_outputs(
                    traced.bind(arrays), outputs, rows.shape[0], channels_last=layout.channels_last
                )
                return _Scored(outputs, scored.scores, scored.indices)

            return scores

        function, params = self._compiled(("from_layer", layer, traced.key, precision), build)
        result = self._call(function, params, x, activations, traced.arrays)
        return self._scored(result, target, count)

    # -- helpers --------------------------------------------------------------------------

    def _running(self, x: Any) -> contextlib.AbstractContextManager[None]:
        channels_last = self.kind.layout.channels_last
        return kit.running_model(
            self.kind.name, tuple(x.shape), str(x.dtype), channels_last=channels_last
        )

    def _prepare(self, inputs: Any) -> Any:
        if not isinstance(inputs, np.ndarray | jax.Array):
            raise InputError(
                f"inputs must be a numpy or JAX array, got {type(inputs).__qualname__}"
            )
        expected = (
            "(N, C, H, W), channels-first, for Equinox" if not self.kind.layout.channels_last
            else "(N, H, W, C), channels-last, for Flax and function pairs"
        )  # fmt: skip
        floating = bool(jnp.issubdtype(inputs.dtype, jnp.floating))
        kit.check_batch(tuple(inputs.shape), str(inputs.dtype), floating=floating,
                        expected=expected)  # fmt: skip
        return jnp.asarray(inputs)

    # -- the rest of the protocol ---------------------------------------------------------

    def classifier_weights(self, classifier: object | None = None) -> Any:
        """The ``(K, C)`` weights of the model's last linear layer."""
        if classifier is not None:
            raise InputError(
                f"classifier={classifier!r}: the jax backend finds CAM's classifier itself "
                "(the model's last linear layer); pass no classifier="
            )
        return self.kind.classifier_weights()

    def input_size(self, inputs: Any) -> tuple[int, int]:
        return _input_size(inputs, self.kind.layout)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def close(self) -> None:
        """Nothing to release: compiled functions live in a bounded, shared cache."""
