"""The provider of Keras 3 models on the JAX and PyTorch backends.

How a capture runs, and why:

- The model runs as the user runs it, ``model(x, training=False)``, eagerly. While it runs,
  the ``call`` of each chosen layer is shadowed (for the calling thread only, restored on every
  exit path: :func:`camkit_keras._layers.shadow_calls`) by a wrapper that records the layer's
  output and adds a zero *probe* to it; the gradient of the scores with respect to the probe is
  ``dS/dA``, taken by the framework Keras runs on (:mod:`camkit_keras._autodiff`). No
  functional sub-model is built, so nested and subclassed models work alike.
- A layer called several times is captured at its last call: the count is learned at the
  first capture (one extra forward pass, once per model and layer) and remembered per model.
- Pre-activations (FullGrad) are probed through the layer's ``activation``, the image (guided
  backpropagation) by a probe added before the model runs; guided ReLUs come from the
  framework (a guided jaxpr on JAX, a ``TorchFunctionMode`` on PyTorch), so a ReLU written in
  a subclassed ``call`` is guided too.
- Arrays stay the framework's, on the model's device (Keras' default device), laid out as the
  layer returns them; the layer table (:func:`camkit_keras._layers.layer_calls`, shared with
  :mod:`camkit_tf`) says how, and the core reads every layout the same way.
- A final softmax is left out while camkit runs, as on TensorFlow; a :class:`Substituted`
  model runs in its ``keras.StatelessScope``.

Built from the public names of :mod:`camkit.provider`, with the framework helpers of
:mod:`camkit_jax` and :mod:`camkit_torch` for gradients.
"""

from __future__ import annotations

import contextlib
import importlib
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

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
)
from camkit.targets import ClassTarget

from . import BACKENDS
from ._autodiff import Autodiff, Probes, Run, ShapeMemo, autodiff_for
from ._base import KerasProviderBase
from ._layers import (
    classifier_kernel,
    effective_bias,
    first_look,
    first_tensor,
    layer_calls,
    logits_of,
    not_called,
    shadow_calls,
    warn_if_probabilities,
    with_first_tensor,
)

__all__ = ["KerasProvider"]

#: The probe added to the image, beside the layers' (whose names hold no ``<``).
_IMAGE = "<image>"
#: Where a layer is tapped: its output, or its activation's input (``z``, for FullGrad).
Tap = Literal["output", "pre-activation"]


@dataclass
class _ModelState:
    """What camkit learns of one model: each layer's calls per forward pass, the layers whose
    replacement cannot broadcast a one-sample prefix, and the shapes of the probes."""

    calls: dict[str, int] = field(default_factory=dict)
    repeats_prefix: set[str] = field(default_factory=set)
    shapes: dict[Hashable, ShapeMemo] = field(default_factory=dict)

    def memo(self, inputs: ModelInputs, taps: Mapping[str, Tap]) -> ShapeMemo:
        """The probe shapes of a pass over ``inputs`` (by signature) with ``taps``."""
        key = (inputs.signature(), tuple(taps.items()))
        return self.shapes.setdefault(key, ShapeMemo())


_STATES: kit.ModelTable[_ModelState] = kit.ModelTable(_ModelState)


class _Recount(Exception):
    """A layer was called another number of times than remembered: run again."""


class KerasProvider(KerasProviderBase):
    """Captures activations and gradients of a Keras 3 model running on JAX or PyTorch."""

    capabilities = frozenset(
        {CLASSIFIER_WEIGHTS, FORWARD_SCORES, FORWARD_FROM_LAYER, INPUT_GRADIENTS, BIAS_GRADIENTS}
        | {PARAMETER_RANDOMIZATION}
    )

    name = "keras"

    def __init__(self, model: Any) -> None:
        keras = importlib.import_module("keras")
        super().__init__(model, keras)
        backend = keras.backend.backend()
        if backend not in BACKENDS:
            raise BackendError(
                f"this Keras model runs on the {backend!r} Keras backend; camkit's keras "
                f"backend explains Keras 3 on {' and '.join(BACKENDS)}: leave backend= out (or "
                "pass backend='tf') to explain it through TensorFlow"
            )
        self.ops = keras.ops
        self.autodiff: Autodiff = autodiff_for(backend)
        self._state = _STATES.get(self._owner)

    # -- layers ---------------------------------------------------------------------------

    def layers(self, inputs: ModelInputs) -> LayerTable:
        prepared = self._prepare(inputs)
        return kit.layer_table(self._owner, prepared.signature(), lambda: self._probe(prepared))

    def _probe(self, inputs: ModelInputs) -> LayerTable:
        """Run the model once, recording every layer's output shape and layout in order."""
        with self._running(inputs):
            calls = self.autodiff.forward(
                lambda: layer_calls(
                    self._layers(), inputs.image, self.ops.is_tensor, lambda: self._call(inputs)
                )
            )
        return LayerTable.of(calls, self.input_size(inputs))

    # -- running the model ----------------------------------------------------------------

    @contextlib.contextmanager
    def _running(self, inputs: ModelInputs) -> Iterator[None]:
        """The model's lock, its failures as :class:`ModelError`, and a :class:`Substituted`
        model's scope."""
        image = inputs.image
        dtype = self.keras.backend.standardize_dtype(image.dtype)
        with (
            self._lock,
            kit.running_model(self._name, tuple(image.shape), dtype, channels_last=True),
            self._scope(),
        ):
            yield

    def _call(self, inputs: ModelInputs) -> Any:
        """The model on ``inputs`` as Keras takes them."""
        structure, kwargs = self._arguments(inputs)
        return self.model(structure, training=False, **kwargs)

    def _instrumented(
        self, inputs: ModelInputs, target: Target, count: int, taps: Mapping[str, Tap],
        replaced: tuple[str, Any] | None = None,
    ) -> Run:  # fmt: skip
        """``run(probes) -> (scores, (tapped, outputs, indices))``: the model's forward pass
        and the target's ``(N,)`` or ``(N, K)`` scores, each layer of ``taps`` recorded (at its
        last call) and given its probe (the image too, as :data:`_IMAGE`, where ``taps`` holds
        it); ``replaced`` ``(layer, value)`` hands on ``value`` for the layer's output
        instead."""
        every = self._layers()
        outputs_of = {p: every[p] for p, tap in taps.items() if tap == "output" and p != _IMAGE}
        if replaced is not None:
            outputs_of[replaced[0]] = every[replaced[0]]
        before_activation = {p: every[p] for p, tap in taps.items() if tap == "pre-activation"}
        traced = kit.trace_target(target, count)
        arrays = {name: self.ops.convert_to_tensor(v) for name, v in traced.arrays.items()}
        bound = traced.bind(arrays)
        final = self._final_softmax_layer()
        is_tensor, cast = self.ops.is_tensor, self.ops.cast
        remembered = self._state.calls

        def run(probes: Probes | None) -> tuple[Any, Any]:
            tapped: dict[str, Any] = {}
            seen: Counter[str] = Counter()

            def tap(path: str, tensor: Any) -> Any:
                tapped[path] = tensor
                return tensor if probes is None else probes.add(path, tensor)

            def output_call(path: str, call: Callable[..., Any]) -> Callable[..., Any]:
                def tapping_call(*args: Any, **kwargs: Any) -> Any:
                    output = call(*args, **kwargs)
                    seen[path] += 1
                    if seen[path] != remembered.get(path, 1):
                        return output
                    tensor = first_tensor(output, is_tensor)
                    if tensor is None:
                        raise LayerError(
                            f"layer {path!r} returns {type(output).__name__}, not a tensor; "
                            "choose a layer with a tensor output"
                        )
                    if replaced is not None and path == replaced[0]:
                        new = cast(replaced[1], tensor.dtype)
                    else:
                        new = tap(path, tensor)
                    return with_first_tensor(output, new, is_tensor)

                return tapping_call

            def activation(path: str, original: Callable[..., Any]) -> Callable[..., Any]:
                def tapping_activation(z: Any) -> Any:
                    seen[path] += 1
                    if seen[path] == remembered.get(path, 1):
                        z = tap(path, z)
                    return original(z)

                return tapping_activation

            image = tap(_IMAGE, inputs.image) if _IMAGE in taps else inputs.image
            with logits_of(self.keras, final):  # first: a tapped activation wraps what remains
                with shadow_calls(before_activation, activation, "activation"):
                    with shadow_calls(outputs_of, output_call):
                        outputs = self._call(inputs.with_image(image))
            self._check_calls(seen, [*outputs_of, *before_activation])
            scored = kit.score_outputs(bound, outputs, count, channels_last=True)
            return scored.scores, (tapped, outputs, scored.indices)

        return run

    def _check_calls(self, seen: Counter[str], paths: Sequence[str]) -> None:
        """A :class:`LayerError` for a layer the forward pass never called; :class:`_Recount`
        (after remembering the count) for one called another number of times."""
        for path in paths:
            if seen[path] == 0:
                raise not_called(path)
        recount = {p: seen[p] for p in paths if seen[p] != self._state.calls.get(p, 1)}
        if recount:
            self._state.calls.update(recount)
            raise _Recount

    def _counted(self, run: Callable[[], Any]) -> Any:
        """``run()``, once more where it learned a layer's call count."""
        try:
            return run()
        except _Recount:
            return run()

    # -- capture --------------------------------------------------------------------------

    def capture(
        self, inputs: ModelInputs, layers: Sequence[str], target: Target, *, gradients: bool
    ) -> Capture:
        prepared = self._prepare(inputs)
        count = prepared.count
        taps: dict[str, Tap] = dict.fromkeys(layers, "output")
        run = self._instrumented(prepared, target, count, taps)
        memo = self._state.memo(prepared, taps)
        with self._running(prepared):
            if gradients:
                grads, scores, (tapped, outputs, indices) = self._counted(
                    lambda: self.autodiff.gradients(run, layers, False, self.model, memo)
                )
            else:
                scores, (tapped, outputs, indices) = self._counted(
                    lambda: self.autodiff.forward(lambda: run(None))
                )
        kit.check_outputs(target, outputs, count, channels_last=True)
        final = self._final_softmax_layer()
        if (
            isinstance(target, ClassTarget) and final is None and self.ops.is_tensor(outputs)
            and first_look(self.model)
        ):  # fmt: skip
            warn_if_probabilities(self.autodiff.to_numpy(outputs))
        layer_gradients = None
        if gradients:
            if any(grads[path] is None for path in layers):
                raise LayerError(
                    f"the target score does not depend on layer {layers[0]!r}; choose a layer "
                    "on the path from the inputs to the scored output"
                )
            layer_gradients = tuple(self._float32(grads[path]) for path in layers)
        return Capture(
            activations=tuple(self._float32(tapped[path]) for path in layers),
            gradients=layer_gradients,
            outputs=outputs,
            scores=scores,
            indices=indices,
        )

    def _float32(self, array: Any) -> Any:
        return self.ops.cast(array, "float32")

    # -- forward passes without capture (perturbation methods, metrics) ---------------------

    def core_inputs(self, inputs: ModelInputs) -> Any:
        """The validated image, channels-first ``(N, C, *S)`` float32 on the model's device."""
        return self.ops.moveaxis(self._prepare(inputs).image, -1, 1)

    def native_image(self, x: Any) -> Any:
        """A channels-first image back in Keras' channels-last layout."""
        return self.ops.moveaxis(self.ops.convert_to_tensor(x), 1, -1)

    def _scored(
        self, inputs: ModelInputs, target: Target, count: int,
        replaced: tuple[str, Any] | None = None,
    ) -> ScoredTarget:  # fmt: skip
        prepared = self._prepare(inputs)
        run = self._instrumented(prepared, target, count, {}, replaced)
        with self._running(prepared):
            scores, (_, outputs, indices) = self._counted(
                lambda: self.autodiff.forward(lambda: run(None))
            )
        kit.check_outputs(target, outputs, count, channels_last=True)
        return ScoredTarget(self._float32(scores), indices)

    def forward_scores(
        self, inputs: ModelInputs, target: Target, *, precision: Precision
    ) -> ScoredTarget:
        """The target's scores of ``inputs`` (the image as from ``native_image``)."""
        self._check_precision(precision)
        return self._scored(inputs, target, int(inputs.image.shape[0]))

    def _scored_with(
        self, inputs: ModelInputs, layer: str, replacement: Any, target: Target, count: int
    ) -> ScoredTarget:
        return self._scored(inputs, target, count, (layer, self.ops.convert_to_tensor(replacement)))

    def _repeats_prefix(self) -> set[str]:
        return self._state.repeats_prefix

    def _backward(
        self, inputs: ModelInputs, target: Target, rule: GradientRule, layers: tuple[str, ...]
    ) -> FullGradients:
        ops = self.ops
        prepared = self._prepare(inputs)
        count = prepared.count
        table = self.layers(prepared)
        every = self._layers()
        # a layer with an activation is probed at the activation's input: ``z``
        taps: dict[str, Tap] = {
            _IMAGE: "output",
            **{
                path: "pre-activation" if hasattr(every[path], "activation") else "output"
                for path in layers
            },
        }
        run = self._instrumented(prepared, target, count, taps)
        memo = self._state.memo(prepared, taps)
        with self._running(prepared):
            grads, scores, (tapped, outputs, indices) = self._counted(
                lambda: self.autodiff.gradients(run, list(taps), rule == "guided", self.model, memo)
            )
            biases = [effective_bias(ops, self.keras, every[path]) for path in layers]
        kit.check_outputs(target, outputs, count, channels_last=True)
        axis = len(scores.shape)  # the channel axis, after the batch and target axes
        lead = tuple(scores.shape)

        def channels_first(path: str, grad: Any | None) -> Any:
            if grad is None:
                grad = ops.zeros((*lead, *tapped[path].shape[1:]), "float32")
            last = path == _IMAGE or table[path].layout == "channels_last"
            return ops.moveaxis(self._float32(grad), -1, axis) if last else self._float32(grad)

        terms = []
        for path, bias in zip(layers, biases, strict=True):
            grad = channels_first(path, grads[path])
            shape = (-1, *(1,) * (len(grad.shape) - axis - 1))
            terms.append(grad * ops.reshape(bias, shape))
        return FullGradients(
            channels_first(_IMAGE, grads[_IMAGE]),
            tuple(terms),
            ScoredTarget(self._float32(scores), indices),
        )

    # -- helpers --------------------------------------------------------------------------

    def _prepare(self, inputs: ModelInputs) -> ModelInputs:
        """The inputs with the image checked and a float32 tensor on Keras' device, every
        other array a tensor."""
        image = inputs.image
        if not (isinstance(image, np.ndarray) or self.ops.is_tensor(image)):
            raise InputError(
                f"inputs must be a numpy array or a {self.autodiff.name} array, got "
                f"{type(image).__qualname__}"
            )
        dtype = self.keras.backend.standardize_dtype(image.dtype)
        floating = dtype.startswith(("float", "bfloat"))
        kit.check_image(tuple(image.shape), dtype, floating=floating, channels_last=True)
        converted = inputs.map_inputs(self.ops.convert_to_tensor)
        return converted.with_image(self._float32(converted.image))

    # -- the rest of the protocol ---------------------------------------------------------

    def classifier_weights(self, classifier: object | None = None) -> Any:
        """The ``(K, C)`` kernel of ``classifier``, or of the model's last Dense layer."""
        kernel = classifier_kernel(self.keras, self._layers(), classifier, self._name)
        with self._scope():
            value = kernel.value  # in a Substituted model's scope: its new value
        return self.ops.transpose(self._float32(value))

    def to_numpy(self, array: Any) -> np.ndarray:
        return self.autodiff.to_numpy(array) if self.ops.is_tensor(array) else np.asarray(array)

    def close(self) -> None:
        """Nothing to release: what camkit learns of a model is kept weakly, with it."""
