"""The JAX provider: activations and ``dS/dA`` from Flax NNX, Flax Linen or plain functions.

How a capture runs, and why:

- The chosen layer's output ``A`` is intercepted and replaced by ``A + delta`` with ``delta = 0``;
  ``jax.value_and_grad`` with respect to ``delta`` is then exactly ``dS/dA``, and the user's
  model is never edited. Interception per model kind:

  - Flax NNX: inside the compiled function the model is rebuilt from ``nnx.split`` (a throwaway
    copy, put in eval mode) and the chosen submodules of the copy get a subclass whose
    ``__call__`` intercepts; the user's instance is untouched.
  - Flax Linen: ``flax.linen.intercept_methods`` around ``module.apply``.
  - Plain functions: ``head(params, features(params, x) + delta)``.

- An ``eval_shape`` pass at trace time gives each layer's output shape and call count: a
  layer called several times is captured at its last call.
- The whole pipeline (forward, gradient, the method's weights and map, resize, normalization)
  is one ``jax.jit`` function, cached per model structure (NNX graph definition, Linen module,
  function pair), layers, target kind and method options; JAX reuses it for inputs of the same
  shape. Arrays stay on the model's device; only the final maps come back as numpy.
- Flax is channels-last: activations ``(N, H, W, C)`` are handed to the core as
  ``(N, C, H, W)``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from camkit import (
    CLASSIFIER_WEIGHTS,
    FORWARD_FROM_LAYER,
    FORWARD_SCORES,
    FUSED_PIPELINE,
    Capture,
    InputError,
    LayerError,
)
from camkit._errors import CamkitError, closest_names
from camkit._layers import last_spatial_layer
from camkit._targets import (
    ScoredTarget,
    TracedTarget,
    score_traced,
    trace_target,
    validate_target,
)
from camkit.targets import Target

from . import FunctionSplit, Linen, _is_linen_pair

__all__ = ["JaxProvider", "trace_count"]

Intercept = Callable[[str, Any], Any]  # (layer path, output) -> output
Run = Callable[[Any, Any, Intercept, frozenset[str] | None], Any]  # (params, x, ...) -> outputs

_TRACES: Counter[tuple[Any, ...]] = Counter()
_COMPILED: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_COMPILED_LIMIT = 32  # compiled pipelines kept, least recently used dropped first
_LOCK = threading.Lock()


def trace_count() -> int:
    """How many times any camkit capture has been traced (compiled) in this process."""
    return sum(_TRACES.values())


class _Layout(NamedTuple):
    """How a model kind takes its inputs: per sample (vmapped) or batched, channel axis."""

    per_sample: bool
    channels_last: bool


def _input_size(inputs: Any, channels_last: bool) -> tuple[int, int]:
    if channels_last:
        return int(inputs.shape[1]), int(inputs.shape[2])
    return int(inputs.shape[2]), int(inputs.shape[3])


def _channels_first(array: Any) -> Any:
    array = array.astype(jnp.float32)
    return jnp.transpose(array, (0, 3, 1, 2)) if array.ndim == 4 else array


# -- model kinds ------------------------------------------------------------------------------
# Each kind says how to list its layers and how to run itself with an intercept on the
# chosen layers: split() -> (hashable structure, params pytree, run(params, x, intercept, paths)).


class _BatchedChannelsLast:
    """Flax and plain functions: the model takes a batch, channels-last."""

    per_sample = False
    channels_last = True

    @staticmethod
    def is_spatial(shape: tuple[int, ...]) -> bool:
        return len(shape) == 4 and shape[1] * shape[2] > 1


class _NnxModel(_BatchedChannelsLast):
    def __init__(self, model: Any) -> None:
        from flax import nnx

        self.nnx = nnx
        self.model = model
        self.capabilities = frozenset({CLASSIFIER_WEIGHTS})

    def modules(self) -> dict[str, Any]:
        return {
            ".".join(map(str, path)): module
            for path, module in self.nnx.iter_modules(self.model)
            if path
        }

    def split(self) -> tuple[Any, Any, Run]:
        graphdef, state = self.nnx.split(self.model)
        nnx = self.nnx

        def run(params: Any, x: Any, intercept: Intercept, paths: frozenset[str] | None) -> Any:
            copy = nnx.merge(graphdef, params)
            copy.eval()  # dropout off, batch statistics frozen: on the copy only
            for path, module in nnx.iter_modules(copy):
                name = ".".join(map(str, path))
                if name and (paths is None or name in paths):
                    _intercept_calls(module, name, intercept)
            return copy(x)

        return graphdef, state, run

    def classifier_weights(self) -> Any:
        linears = [m for m in self.modules().values() if isinstance(m, self.nnx.Linear)]
        if not linears:
            raise LayerError("CAM needs an nnx.Linear classifier, and the model has none")
        return jnp.asarray(linears[-1].kernel[...], jnp.float32).T


def _intercept_calls(module: Any, path: str, intercept: Intercept) -> None:
    """Give one (throwaway) module a subclass whose ``__call__`` passes through ``intercept``."""
    base = type(module)

    class Intercepted(base):  # type: ignore[misc, valid-type]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return intercept(path, base.__call__(self, *args, **kwargs))

    Intercepted.__name__ = base.__name__
    Intercepted.__qualname__ = base.__qualname__
    object.__setattr__(module, "__class__", Intercepted)


class _LinenModel(_BatchedChannelsLast):
    def __init__(self, module: Any, variables: Any, apply_kwargs: Any) -> None:
        import flax.linen

        self.linen = flax.linen
        self.module = module
        self.variables = variables
        self.apply_kwargs = dict(apply_kwargs)
        self.capabilities = frozenset({CLASSIFIER_WEIGHTS})

    def modules(self) -> dict[str, Any]:
        names: dict[str, Any] = {}

        def walk(tree: Any, prefix: str) -> None:
            for key, value in tree.items():
                if isinstance(value, dict) or hasattr(value, "items"):
                    name = prefix + str(key)
                    names[name] = None
                    walk(value, name + ".")

        walk(self.variables.get("params", {}), "")
        return names

    def split(self) -> tuple[Any, Any, Run]:
        module, linen, apply_kwargs = self.module, self.linen, self.apply_kwargs

        def run(params: Any, x: Any, intercept: Intercept, paths: frozenset[str] | None) -> Any:
            def interceptor(call: Any, args: Any, kwargs: Any, context: Any) -> Any:
                output = call(*args, **kwargs)
                name = ".".join(context.module.path)
                if context.method_name == "__call__" and name and (paths is None or name in paths):
                    output = intercept(name, output)
                return output

            with linen.intercept_methods(interceptor):
                return module.apply(params, x, **apply_kwargs)

        structure = (module, tuple(sorted(apply_kwargs.items())))
        return structure, self.variables, run

    def classifier_weights(self) -> Any:
        kernels = [
            leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(self.variables)
            if getattr(path[-1], "key", None) == "kernel" and np.ndim(leaf) == 2
        ]
        if not kernels:
            raise LayerError("CAM needs a Dense classifier, and the Linen model has none")
        return jnp.asarray(kernels[-1], jnp.float32).T


class _FunctionModel(_BatchedChannelsLast):
    def __init__(self, split: FunctionSplit) -> None:
        self.function_split = split
        self.capabilities: frozenset[str] = frozenset()

    def modules(self) -> dict[str, Any]:
        return {"features": None}

    def split(self) -> tuple[Any, Any, Run]:
        features, head = self.function_split.features, self.function_split.head

        def run(params: Any, x: Any, intercept: Intercept, paths: frozenset[str] | None) -> Any:
            activations = features(params, x)
            if paths is None or "features" in paths:
                activations = intercept("features", activations)
            return head(params, activations)

        return (features, head), self.function_split.params, run


class _EquinoxModel:
    """Equinox: the model takes one image, channels-first ``(C, H, W)``, and is vmapped."""

    per_sample = True
    channels_last = False

    def __init__(self, model: Any) -> None:
        import equinox

        self.eqx = equinox
        self.model = model
        self.capabilities = frozenset({CLASSIFIER_WEIGHTS})

    @staticmethod
    def is_spatial(shape: tuple[int, ...]) -> bool:
        return len(shape) == 3 and shape[1] * shape[2] > 1  # one sample's (C, H, W)

    def modules(self) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def walk(node: Any, prefix: str) -> None:
            if isinstance(node, (list, tuple)):
                children = [(str(i), child) for i, child in enumerate(node)]
            elif isinstance(node, self.eqx.Module):
                children = [(f.name, getattr(node, f.name)) for f in dataclasses.fields(node)]
            else:
                return
            for name, child in children:
                path = prefix + name
                if isinstance(child, self.eqx.Module):
                    found[path] = child
                walk(child, path + ".")

        walk(self.model, "")
        return found

    def split(self) -> tuple[Any, Any, Run]:
        eqx = self.eqx
        arrays, static = eqx.partition(self.model, eqx.is_array)
        leaves, treedef = jax.tree_util.tree_flatten(static)
        try:
            structure: Any = (treedef, hash(tuple(leaves)) and tuple(leaves))
        except TypeError:  # unhashable static parts: their identities, kept alive by `static`
            structure = (treedef, tuple(id(leaf) for leaf in leaves))
        intercepted = _intercepted_module_class(eqx)
        every_path = tuple(self.modules())  # the closure must not hold the model itself

        def run(params: Any, x: Any, intercept: Intercept, paths: frozenset[str] | None) -> Any:
            model = eqx.combine(params, static)
            for path in paths if paths is not None else every_path:
                getter = functools.partial(_get_path, parts=path.split("."))
                model = eqx.tree_at(
                    getter, model, replace_fn=lambda inner, p=path: intercepted(inner, p, intercept)
                )
            return model(x)

        return structure, arrays, run

    def classifier_weights(self) -> Any:
        linears = [m for m in self.modules().values() if isinstance(m, self.eqx.nn.Linear)]
        if not linears:
            raise LayerError("CAM needs an eqx.nn.Linear classifier, and the model has none")
        return jnp.asarray(linears[-1].weight, jnp.float32)


def _get_path(node: Any, parts: Sequence[str]) -> Any:
    for part in parts:
        node = node[int(part)] if isinstance(node, (list, tuple)) else getattr(node, part)
    return node


@functools.cache
def _intercepted_module_class(eqx: Any) -> type:
    class Intercepted(eqx.Module):  # type: ignore[misc, name-defined]
        """Stands in for a submodule: calls it, then the intercept on its output."""

        inner: Any
        path: str = eqx.field(static=True)
        intercept: Any = eqx.field(static=True)

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return self.intercept(self.path, self.inner(*args, **kwargs))

    return Intercepted


def _model_kind(model: Any) -> Any:
    if isinstance(model, FunctionSplit):
        return _FunctionModel(model)
    if isinstance(model, Linen):
        return _LinenModel(model.module, model.variables, model.apply_kwargs)
    if _is_linen_pair(model):
        return _LinenModel(model[0], model[1], {})
    if "equinox" in sys.modules and isinstance(model, sys.modules["equinox"].Module):
        return _EquinoxModel(model)
    from flax import nnx

    if isinstance(model, nnx.Module):
        return _NnxModel(model)
    raise InputError(
        f"the jax backend takes a Flax NNX module, a (Linen module, variables) pair, "
        f"camkit_jax.Linen, an Equinox module or camkit_jax.FunctionSplit; got "
        f"{type(model).__qualname__}"
    )


# -- the capture, traced ----------------------------------------------------------------------


class _Perturbation:
    """An intercept that records each layer's output and adds ``deltas[layer]`` to it.

    With ``last_calls`` it acts on each layer's last call only (a shared layer is captured
    where it is called last); without, it records every call (the last one wins) and counts
    them in ``seen``. With ``replace`` the layer's output is replaced by ``deltas[layer]``.
    """

    def __init__(
        self, deltas: dict[str, Any] | None, last_calls: dict[str, int] | None,
        replace: bool = False,
    ) -> None:  # fmt: skip
        self.deltas = deltas
        self.last_calls = last_calls
        self.replace = replace  # hand on deltas[layer] itself instead of output + delta
        self.seen: Counter[str] = Counter()
        self.recorded: dict[str, Any] = {}

    def __call__(self, path: str, output: Any) -> Any:
        if not isinstance(output, jax.Array):
            raise LayerError(
                f"layer {path!r} returns {type(output).__name__}, not an array; choose a "
                "layer with a single array output"
            )
        self.seen[path] += 1
        if self.last_calls is None or self.seen[path] == self.last_calls[path]:
            self.recorded[path] = output
            if self.deltas is not None:
                delta = self.deltas[path]
                output = delta.astype(output.dtype) if self.replace else output + delta
        return output


def _forward(
    kind: _Layout, run: Run, params: Any, x: Any, deltas: dict[str, Any] | None,
    last_calls: dict[str, int] | None, paths: frozenset[str],
) -> tuple[Any, dict[str, Any], Counter[str]]:  # fmt: skip
    """Outputs, each layer's recorded output and call counts; per-sample kinds are vmapped."""
    if not kind.per_sample:
        perturbation = _Perturbation(deltas, last_calls)
        outputs = run(params, x, perturbation, paths)
        return outputs, perturbation.recorded, perturbation.seen
    seen: Counter[str] = Counter()

    def one(sample: Any, sample_deltas: dict[str, Any] | None) -> Any:
        perturbation = _Perturbation(sample_deltas, last_calls)
        outputs = run(params, sample, perturbation, paths)
        seen.update(perturbation.seen)  # counted once, while vmap traces one sample
        return outputs, perturbation.recorded

    outputs, recorded = jax.vmap(one)(x, deltas)
    return outputs, recorded, seen


def _probe(
    kind: _Layout, run: Run, params: Any, x: Any, layers: Sequence[str]
) -> tuple[dict[str, Any], dict[str, int]]:
    """The layers' output shapes and call counts, from an ``eval_shape`` pass (no compute)."""
    found: dict[str, Any] = {}

    def shapes() -> Any:
        _, recorded, seen = _forward(kind, run, params, x, None, None, frozenset(layers))
        found["calls"] = dict(seen)
        return recorded

    recorded_shapes = jax.eval_shape(shapes)
    calls = found["calls"]
    for path in layers:
        if calls.get(path, 0) == 0:
            raise LayerError(
                f"layer {path!r} was not called during the forward pass; choose a layer that "
                "the model uses"
            )
    return recorded_shapes, calls


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _at_precision(params: Any, x: Any, precision: str) -> tuple[Any, Any]:
    """Parameters and inputs cast to ``precision`` (floating leaves only)."""
    dtype = _DTYPES[precision]
    if dtype == jnp.float32:
        return params, x

    def cast(leaf: Any) -> Any:
        floating = isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating)
        return leaf.astype(dtype) if floating else leaf

    return jax.tree_util.tree_map(cast, params), x.astype(dtype)


def _native(x: Any, layout: _Layout) -> Any:
    """Channels-first core arrays ``(N, C, H, W)`` in the model's own layout."""
    return jnp.transpose(x, (0, 2, 3, 1)) if layout.channels_last and x.ndim == 4 else x


def _identity(path: str, output: Any) -> Any:
    return output


def _scored_outputs(
    layout: _Layout, key: tuple[Any, ...], outputs: Any, indices: Any, mask: Any
) -> tuple[Any, Any, Any]:
    scores, chosen = score_traced(key, outputs, indices, mask, channels_last=layout.channels_last)
    return outputs, scores.astype(jnp.float32), chosen


def _capture(
    kind: _Layout,
    run: Run,
    params: Any,
    x: Any,
    traced: tuple[Any, Any, tuple[Any, ...]],
    layers: tuple[str, ...],
    gradients: bool,
) -> Capture:
    """Forward, zero-perturbation gradients and the target's scores, inside a trace."""
    indices, mask, target_key = traced
    wanted = frozenset(layers)
    recorded_shapes, calls = _probe(kind, run, params, x, layers)

    def total_score(deltas: dict[str, Any] | None) -> Any:
        outputs, recorded, _ = _forward(kind, run, params, x, deltas, calls, wanted)
        scores, chosen = score_traced(
            target_key, outputs, indices, mask, channels_last=kind.channels_last
        )
        return jnp.sum(scores), (recorded, outputs, scores, chosen)

    to_core = _channels_first if kind.channels_last else (lambda a: a.astype(jnp.float32))
    if gradients:
        zeros = {p: jnp.zeros(recorded_shapes[p].shape, recorded_shapes[p].dtype) for p in layers}
        (_, aux), grads = jax.value_and_grad(total_score, has_aux=True)(zeros)
        layer_gradients = tuple(to_core(grads[path]) for path in layers)
    else:
        _, aux = total_score(None)
        layer_gradients = None
    recorded, outputs, scores, chosen = aux
    return Capture(
        activations=tuple(to_core(recorded[path]) for path in layers),
        gradients=layer_gradients,
        outputs=outputs,
        scores=scores.astype(jnp.float32),
        indices=chosen,
    )


class JaxProvider:
    """Captures activations and gradients of a JAX model inside one compiled function."""

    def __init__(self, model: Any) -> None:
        self.kind = _model_kind(model)
        self.capabilities = (
            frozenset({FUSED_PIPELINE, FORWARD_SCORES, FORWARD_FROM_LAYER}) | self.kind.capabilities
        )
        self._default_layers: dict[tuple[int, ...], str] = {}
        self._keys: set[tuple[Any, ...]] = set()

    @property
    def traces(self) -> int:
        """How many times this provider's compiled functions were traced."""
        return sum(_TRACES[key] for key in self._keys)

    # -- layers ---------------------------------------------------------------------------

    def layer_names(self) -> list[str]:
        return list(self.kind.modules())

    def resolve_layer(self, layer: object) -> str:
        modules = self.kind.modules()
        if isinstance(layer, str):
            if layer in modules:
                return layer
            raise LayerError(
                f"layer={layer!r} is not a layer of this model; layers are named by their "
                f"module path ('backbone.layers.3'); {closest_names(layer, modules)}"
            )
        for path, module in modules.items():
            if module is not None and module is layer:
                return path
        raise LayerError(
            f"layer={layer!r} is not a submodule of this model; pass its path, such as "
            f"{next(iter(modules), 'backbone.layers.3')!r}"
        )

    def default_layer(self, inputs: Any) -> str:
        x = self._prepare(inputs)
        known = self._default_layers.get(tuple(x.shape))
        if known is not None:
            return known
        _, params, run = self.kind.split()
        order: list[tuple[str, tuple[int, ...]]] = []

        def record(path: str, output: Any) -> Any:
            if isinstance(output, jax.Array):
                order.append((path, tuple(output.shape)))
            return output

        def forward() -> Any:
            if self.kind.per_sample:
                return jax.vmap(lambda sample: run(params, sample, record, None))(x)
            return run(params, x, record, None)

        self._guard(lambda: jax.eval_shape(forward), x)
        path = last_spatial_layer(order, self.kind.is_spatial, "this model", tuple(x.shape))
        self._default_layers[tuple(x.shape)] = path
        return path

    # -- capture --------------------------------------------------------------------------

    def _cached(
        self, name: tuple[Any, ...], build: Callable[[Run, _Layout], Callable[..., Any]]
    ) -> tuple[Any, Any]:
        """The jitted ``build(run, layout)`` for this model structure and ``name``, and the
        model's parameters to call it with."""
        structure, params, run = self.kind.split()
        key = (structure, *name)
        self._keys.add(key)
        with _LOCK:
            if key in _COMPILED:
                _COMPILED.move_to_end(key)
                return _COMPILED[key], params
            # the cache outlives this provider: the closure holds no model, only its layout
            function = build(run, _Layout(self.kind.per_sample, self.kind.channels_last))

            def counted(*args: Any) -> Any:
                _TRACES[key] += 1  # Python runs only while JAX traces
                return function(*args)

            _COMPILED[key] = jax.jit(counted)
            while len(_COMPILED) > _COMPILED_LIMIT:
                _COMPILED.popitem(last=False)
            return _COMPILED[key], params

    def _compiled(
        self,
        layers: Sequence[str],
        traced: TracedTarget,
        gradients: bool,
        pipeline: Callable[[Capture, tuple[int, int]], Any] | None,
        pipeline_key: tuple[Any, ...],
    ) -> tuple[Any, Any]:
        def build(run: Run, layout: _Layout) -> Callable[..., Any]:
            def compiled(params: Any, x: Any, indices: Any, mask: Any) -> Any:
                capture = _capture(
                    layout, run, params, x, (indices, mask, traced.key), tuple(layers),
                    gradients,
                )  # fmt: skip
                if pipeline is None:
                    return (capture.activations, capture.gradients, capture.outputs,
                            capture.scores, capture.indices)  # fmt: skip
                cams = pipeline(capture, _input_size(x, layout.channels_last))
                return cams, capture.outputs, capture.scores, capture.indices

            return compiled

        return self._cached((tuple(layers), traced.key, gradients, pipeline_key), build)

    def _run(self, inputs: Any, layers: Sequence[str], target: Target, gradients: bool,
             pipeline: Any, pipeline_key: tuple[Any, ...]) -> tuple[Any, Any]:  # fmt: skip
        x = self._prepare(inputs)
        traced = trace_target(target, int(x.shape[0]))
        compiled, params = self._compiled(layers, traced, gradients, pipeline, pipeline_key)
        result = self._guard(
            lambda: compiled(params, x, jnp.asarray(traced.indices), jnp.asarray(traced.mask)), x
        )
        outputs = result[2] if pipeline is None else result[1]
        validate_target(target, np.asarray(outputs), channels_last=self.kind.channels_last)
        return result, x

    def capture(
        self, inputs: Any, layers: Sequence[str], target: Target, *, gradients: bool
    ) -> Capture:
        arrays, _ = self._run(inputs, layers, target, gradients, None, ())
        return Capture(*arrays)

    def run_pipeline(
        self,
        inputs: Any,
        layers: Sequence[str],
        target: Target,
        *,
        gradients: bool,
        pipeline: Callable[[Capture, tuple[int, int]], Any],
        key: tuple[Any, ...],
    ) -> tuple[Any, Capture]:
        (cams, outputs, scores, indices), _ = self._run(
            inputs, layers, target, gradients, pipeline, key
        )
        return cams, Capture((), None, outputs, scores, indices)

    # -- forward passes without capture (perturbation methods, metrics) ---------------------

    def core_inputs(self, inputs: Any) -> Any:
        """The validated inputs as a channels-first ``(N, C, H, W)`` float32 array."""
        x = self._prepare(inputs).astype(jnp.float32)
        return _channels_first(x) if self.kind.channels_last else x

    def native_inputs(self, x: Any) -> Any:
        """Channels-first inputs back in the model's own layout, for ``capture``."""
        return _native(x, _Layout(self.kind.per_sample, self.kind.channels_last))

    def _scored(self, result: Any, target: Target, traced: TracedTarget) -> ScoredTarget:
        outputs, scores, chosen = result
        validate_target(target, np.asarray(outputs), channels_last=self.kind.channels_last)
        return ScoredTarget(scores, None if traced.key[0] == "callable" else chosen)

    def forward_scores(self, x: Any, target: Target, *, precision: str) -> ScoredTarget:
        """The target's scores of a channels-first batch (as from ``core_inputs``), jitted."""
        traced = trace_target(target, int(x.shape[0]))

        def build(run: Run, layout: _Layout) -> Callable[..., Any]:
            def forward(params: Any, x: Any, indices: Any, mask: Any) -> Any:
                params, x = _at_precision(params, x, precision)
                native = _native(x, layout)
                if layout.per_sample:
                    outputs = jax.vmap(lambda s: run(params, s, _identity, frozenset()))(native)
                else:
                    outputs = run(params, native, _identity, frozenset())
                return _scored_outputs(layout, traced.key, outputs, indices, mask)

            return forward

        compiled, params = self._cached(("forward", traced.key, precision), build)
        result = self._guard(
            lambda: compiled(params, x, jnp.asarray(traced.indices), jnp.asarray(traced.mask)), x
        )
        return self._scored(result, target, traced)

    def forward_from_layer(
        self, x: Any, layer: str, activations: Any, target: Target, *, precision: str
    ) -> ScoredTarget:
        """Scores of one sample ``x`` ``(1, ...)`` with ``layer``'s output (at its last call)
        replaced by each row of ``activations`` ``(B, ...)``.

        The replacements are ``vmap``-ped while the sample is not, so the network up to the
        layer runs once and only the rest runs ``B`` times.
        """
        traced = trace_target(target, int(activations.shape[0]))

        def build(run: Run, layout: _Layout) -> Callable[..., Any]:
            def from_layer(params: Any, x: Any, replacements: Any, indices: Any, mask: Any) -> Any:
                params, x = _at_precision(params, x, precision)
                native, rows = _native(x, layout), _native(replacements, layout)
                sample = native[0] if layout.per_sample else native
                _, calls = _probe(layout, run, params, native, [layer])

                def one(row: Any) -> Any:
                    replace = _Perturbation({layer: row if layout.per_sample else row[None]},
                                            calls, replace=True)  # fmt: skip
                    outputs = run(params, sample, replace, frozenset([layer]))
                    return outputs if layout.per_sample else outputs[0]

                outputs = jax.vmap(one)(rows)
                return _scored_outputs(layout, traced.key, outputs, indices, mask)

            return from_layer

        compiled, params = self._cached(("from_layer", layer, traced.key, precision), build)
        result = self._guard(
            lambda: compiled(
                params, x, activations, jnp.asarray(traced.indices), jnp.asarray(traced.mask)
            ),
            x,
        )
        return self._scored(result, target, traced)

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _guard(run: Callable[[], Any], x: Any) -> Any:
        try:
            return run()
        except CamkitError:
            raise
        except (ValueError, TypeError) as error:
            raise InputError(
                f"the model failed on inputs of shape {tuple(x.shape)} and dtype {x.dtype}: "
                f"{type(error).__name__}: {error}"
            ) from error

    @staticmethod
    def _prepare(inputs: Any) -> Any:
        if not isinstance(inputs, (np.ndarray, jax.Array)):
            raise InputError(
                f"inputs must be a numpy or JAX array, got {type(inputs).__qualname__}"
            )
        if not jnp.issubdtype(inputs.dtype, jnp.floating):
            raise InputError(
                f"inputs have dtype {inputs.dtype}; the model needs floating-point inputs, "
                "scaled as in training"
            )
        if inputs.ndim != 4:
            raise InputError(
                f"inputs have shape {tuple(inputs.shape)}; expected a batch of images, (N, H, W, "
                "C) for Flax, (N, C, H, W) for Equinox — add a batch axis with inputs[None]"
            )
        return jnp.asarray(inputs, dtype=jnp.float32 if inputs.dtype == np.float64 else None)

    # -- the rest of the protocol ---------------------------------------------------------

    def classifier_weights(self, classifier: object | None = None) -> Any:
        """The ``(K, C)`` weights of the model's last linear layer."""
        if classifier is not None:
            raise InputError("the jax backend finds CAM's classifier itself; pass no classifier=")
        return self.kind.classifier_weights()

    def input_size(self, inputs: Any) -> tuple[int, int]:
        return _input_size(inputs, self.kind.channels_last)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def close(self) -> None:
        """Nothing to release: compiled functions live in a bounded, shared cache."""
