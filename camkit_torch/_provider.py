"""The PyTorch provider: activations and ``dS/dA`` from an eager ``torch.nn.Module``.

How a capture runs, and why:

- The forward pass starts with autograd off. The first hooked layer switches it on and hands on
  a fresh leaf ``A = output.detach().requires_grad_()``, so autograd records only from that
  layer on: the prefix saves nothing for backward (on EfficientNet-Lite0 a grad-enabled forward
  costs 1.26x an inference one; this costs about 1.02x).
- Each hooked layer passes on a copy of its output (``A.clone()``), so an in-place op that
  follows (``ReLU(inplace=True)``) changes the copy, never the captured activation. A layer
  that returns a tuple (Hugging Face blocks return ``(hidden_states, ...)``) is captured on its
  first tensor.
- Gradients come from ``torch.autograd.grad(sum_n S[n], A)``: with respect to the captured
  activations only, never ``backward()`` into the parameters, whose ``.grad`` stays untouched.
  ``K`` scores per sample ``(N, K)`` take one batched backward from the one forward
  (``is_grads_batched``, the cotangents the rows of the identity, vmapped by autograd), or,
  where an op has no batching rule, ``K`` backward passes over the retained graph.
- A module called several times per forward (a shared activation module) is captured at its
  last call. Each module's call count is remembered per model, so from the second capture on
  the earlier calls run untouched and autograd starts at the last one.
- The layer table (every module's output shape and layout, see :func:`_layout_of`) comes from
  one probe forward per model and input shapes, remembered weakly; so does what a probe learns
  of call counts and fallbacks. camkit keeps no model alive.
- Hooks, train/eval flags and the grad mode are restored on every exit path, and every call
  that runs the model holds the model's lock: forward hooks fire for any thread that calls the
  model, so two captures must never overlap on one model.

Built from the public names of :mod:`camkit.provider` only.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

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
    Capture,
    FullGradients,
    GradientRule,
    InputError,
    LayerError,
    LayerTable,
    Layout,
    ModelInputs,
    Precision,
    ScoredTarget,
    Target,
)

from . import _randomize
from ._backprop import bias_kind, effective_bias, guided_relus

__all__ = ["TorchProvider", "batched_gradients"]

Hook = Callable[[torch.nn.Module, Any, Any], Any]
nn = torch.nn
#: What torch says when an op needs contiguous inputs (``view`` on channels-last memory).
_NEEDS_CONTIGUOUS = re.compile(r"contiguous|view size is not compatible")
#: What torch says when tensors of different batch sizes meet (a concatenation, ``view(1, -1)``).
_BATCH_MISMATCH = re.compile(r"size|shape|dimension", re.IGNORECASE)
#: Modules whose outputs are channels-first ``(N, C, *S)`` by their definition.
_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.Dropout1d,  # drops whole channels; a plain Dropout is elementwise and says nothing
    nn.Dropout2d,
    nn.Dropout3d,
)
#: Modules that act on their input's last axis: on a feature map that axis is the channels.
_LAST_AXIS = (nn.LayerNorm, nn.Linear)


def batched_gradients(
    scores: torch.Tensor, activations: list[torch.Tensor]
) -> tuple[torch.Tensor | None, ...]:
    """``d sum_n S[n, k] / dA`` for every column ``k`` of ``(N, K)`` scores, each
    ``(N, K, ...)``: one vmapped backward, or ``K`` plain ones where vmap cannot run."""
    columns = scores.shape[1]
    eye = torch.eye(columns, dtype=scores.dtype, device=scores.device)
    cotangents = eye[:, None, :].expand(columns, *scores.shape).contiguous()  # (K, N, K)
    try:
        with warnings.catch_warnings():  # ops without a batching rule fall back, correctly
            warnings.simplefilter("ignore", UserWarning)
            grads = torch.autograd.grad(
                scores, activations, cotangents, retain_graph=True,
                is_grads_batched=True, allow_unused=True,
            )  # fmt: skip
        stacked: tuple[torch.Tensor | None, ...] = grads
    except RuntimeError:  # an op autograd cannot vmap: one backward per column
        per_column = [
            torch.autograd.grad(
                scores[:, k].sum(),
                activations,
                retain_graph=k < columns - 1,
                allow_unused=True,
            )
            for k in range(columns)
        ]
        stacked = tuple(
            None if column[0] is None else torch.stack(list(column))
            for column in zip(*per_column, strict=True)
        )
    return tuple(None if g is None else g.movedim(0, 1) for g in stacked)


class _ModelFacts:
    """What camkit learned about one model from its forward passes."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}  # module name -> calls per forward
        self.repeats_prefix: set[str] = set()  # layers whose prefix cannot run on one sample
        self.needs_contiguous_inputs = False  # the model rejects channels-last inputs


_FACTS: kit.ModelTable[_ModelFacts] = kit.ModelTable(_ModelFacts)


@contextlib.contextmanager
def _hooked(modules: Mapping[str, torch.nn.Module], hook: Callable[[str], Hook]) -> Iterator[None]:
    """Register ``hook(name)`` as a forward hook of each module; always remove them all."""
    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _first_tensor(value: Any) -> torch.Tensor | None:
    """A module's output as a tensor: itself, or the first tensor of a tuple or list."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple | list):
        return next((item for item in value if isinstance(item, torch.Tensor)), None)
    return None


def _with_first(value: Any, tensor: torch.Tensor) -> Any:
    """``value`` with its first tensor replaced by ``tensor``."""
    if isinstance(value, torch.Tensor):
        return tensor
    items = list(value)
    index = next(i for i, item in enumerate(items) if isinstance(item, torch.Tensor))
    items[index] = tensor
    return type(value)(items) if isinstance(value, list) else tuple(items)


def _batch_size(outputs: Any) -> int | None:
    """The leading size of the first tensor in (possibly nested) outputs."""
    if isinstance(outputs, torch.Tensor):
        return int(outputs.shape[0]) if outputs.ndim else None
    values = outputs.values() if isinstance(outputs, Mapping) else outputs
    if isinstance(values, list | tuple) or isinstance(outputs, Mapping):
        for value in values:
            size = _batch_size(value)
            if size is not None:
                return size
    return None


def _layout_of(
    module: torch.nn.Module, given: torch.Tensor | None, output: torch.Tensor,
    known: Mapping[int, Layout], rank: int,
) -> Layout | None:  # fmt: skip
    """The layout of ``module``'s ``output`` as far as PyTorch says: its ``data_format``
    (Hugging Face's ConvNeXt norms), a channels-first module type, a norm or linear layer
    acting on the last axis (channels-last on a feature map; tokens on ``(N, T, C)`` over an
    image), else the layout of the tensor it was given (an activation, a container) or of the
    tensor it returns (a container returning a child's output); ``None`` if none says."""
    own = getattr(module, "data_format", None)
    if own in ("channels_first", "channels_last"):
        return own  # type: ignore[no-any-return]
    if isinstance(module, _CHANNELS_FIRST):
        return "channels_first"
    if isinstance(module, _LAST_AXIS) and given is not None and given.ndim == output.ndim >= 3:
        return "tokens" if output.ndim == 3 and rank >= 2 else "channels_last"
    if given is not None and id(given) in known and given.shape == output.shape:
        return known[id(given)]
    return known.get(id(output))


class TorchProvider:
    """Captures activations and gradients of a ``torch.nn.Module`` on its own device.

    Args:
        model: the module to explain.
        eval_mode: run the model in eval mode (dropout off, batch-norm statistics frozen) during
            each capture and restore every submodule's own mode afterwards.
    """

    capabilities = frozenset(
        {CLASSIFIER_WEIGHTS, FORWARD_SCORES, FORWARD_FROM_LAYER, INPUT_GRADIENTS, BIAS_GRADIENTS}
        | {PARAMETER_RANDOMIZATION}
    )

    def __init__(self, model: Any, *, eval_mode: bool = True) -> None:
        if not isinstance(model, torch.nn.Module):
            raise InputError(
                f"the torch backend needs a torch.nn.Module, got {type(model).__qualname__}"
            )
        if type(model).__module__.split(".")[0] in ("keras", "tf_keras"):
            raise BackendError(
                "this is a Keras model on the torch Keras backend; camkit explains Keras models "
                "through TensorFlow: pip install 'camkit[tf]' and set KERAS_BACKEND=tensorflow "
                "before importing keras"
            )
        self.model = model
        self.eval_mode = eval_mode
        self._name = type(model).__name__
        self._facts = _FACTS.get(model)
        self._lock = kit.model_lock(model)

    # -- layers ---------------------------------------------------------------------------

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {name: module for name, module in self.model.named_modules() if name}

    def layer_names(self) -> list[str]:
        return list(self._modules())

    def resolve_layer(self, layer: object) -> str:
        return kit.find_layer(layer, self._modules(), self._name)

    def layers(self, inputs: ModelInputs) -> LayerTable:
        prepared = self._prepare(inputs)
        return kit.layer_table(self.model, prepared.signature(), lambda: self._probe(prepared))

    def _probe(self, inputs: ModelInputs) -> LayerTable:
        """Run the model once, recording every module's output shape and layout in order."""
        image = inputs.image
        rank = image.ndim - 2
        known: dict[int, Layout] = {id(image): "channels_first"}  # torch takes NCHW inputs
        seen: list[torch.Tensor] = [image]  # alive, so that no id is reused during the probe
        calls: list[tuple[str, tuple[int, ...], Layout | None]] = []

        def record(name: str) -> Hook:
            def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
                tensor = _first_tensor(output)
                if tensor is None:
                    return
                layout = _layout_of(module, _first_tensor(args), tensor, known, rank)
                if layout is not None:
                    known[id(tensor)] = layout
                    seen.append(tensor)
                calls.append((name, tuple(tensor.shape), layout))

            return hook

        with self._lock, _hooked(self._modules(), record), self._evaluating(), torch.no_grad():
            self._forward(inputs)
        self._facts.calls.update(Counter(name for name, _, _ in calls))
        # a feature map no module vouches for is channels-first, as torch's convolutions take
        # them, unless the model also makes channels-last ones: then a guess could be wrong
        channels_last = any(lay == "channels_last" and len(s) == rank + 2 for _, s, lay in calls)
        resolved = [
            (name, shape, layout or self._default_layout(len(shape), rank, channels_last))
            for name, shape, layout in calls
        ]
        return LayerTable.of(resolved, self.input_size(inputs))

    @staticmethod
    def _default_layout(ndim: int, rank: int, channels_last: bool) -> Layout | None:
        if ndim == rank + 2:
            return None if channels_last else "channels_first"
        if ndim == 3 and rank >= 2:
            return "tokens"  # (N, T, C) in a model of images: a transformer's tokens
        return None

    # -- capture --------------------------------------------------------------------------

    def capture(
        self, inputs: ModelInputs, layers: Sequence[str], target: Target, *, gradients: bool
    ) -> Capture:
        prepared = self._prepare(inputs)
        with self._lock:
            for _ in range(2):  # a second try only if a shared layer was called fewer times
                result = self._capture_once(prepared, layers, target, gradients)
                if result is not None:
                    return result
        raise LayerError(f"layers {list(layers)!r} were not captured; their call count varies")

    def _capture_once(
        self, inputs: ModelInputs, layers: Sequence[str], target: Target, gradients: bool
    ) -> Capture | None:
        modules = self._modules()
        expected = {name: self._facts.calls.get(name, 1) for name in layers}
        calls: Counter[str] = Counter()
        captured: dict[str, torch.Tensor] = {}

        def capture_hook(name: str) -> Hook:
            def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
                calls[name] += 1
                if calls[name] < expected[name]:
                    return None
                tensor = _first_tensor(output)
                if tensor is None:
                    raise LayerError(
                        f"layer {name!r} returns {type(output).__name__}, not a tensor; choose "
                        "one of its submodules that returns a tensor"
                    )
                if not gradients:
                    captured[name] = tensor.detach().clone()
                    return None
                if torch.is_grad_enabled() and tensor.requires_grad:
                    activation = tensor  # already on the graph an earlier layer started
                else:
                    torch.set_grad_enabled(True)
                    activation = tensor.detach().requires_grad_()
                captured[name] = activation
                return _with_first(output, activation.clone())

            return hook

        count = inputs.count
        grad_mode = torch.is_grad_enabled()
        chosen = {name: modules[name] for name in layers}
        try:
            with _hooked(chosen, capture_hook), self._evaluating(), torch.inference_mode(False):
                with torch.no_grad():
                    outputs = self._forward(inputs)
                    scored = kit.score_outputs(target, outputs, count)
                missing = [name for name in layers if name not in captured]
                if missing:
                    self._recount(missing, calls)
                    return None
                activations = [captured[name] for name in layers]
                layer_gradients = (
                    self._gradients(scored.scores, activations, layers) if gradients else None
                )
        finally:
            torch.set_grad_enabled(grad_mode)
        return Capture(
            activations=tuple(a.detach().float() for a in activations),
            gradients=(
                None if layer_gradients is None else tuple(g.float() for g in layer_gradients)
            ),
            outputs=outputs.detach() if isinstance(outputs, torch.Tensor) else outputs,
            scores=scored.scores.detach(),
            indices=scored.indices,
        )

    def _recount(self, missing: list[str], calls: Counter[str]) -> None:
        never = [name for name in missing if calls[name] == 0]
        if never:
            raise LayerError(
                f"layer {never[0]!r} was not called during the forward pass of {self._name}; "
                "choose a layer that the forward pass uses"
            )
        for name in missing:
            self._facts.calls[name] = calls[name]

    def _gradients(
        self, scores: torch.Tensor, activations: list[torch.Tensor], layers: Sequence[str]
    ) -> tuple[torch.Tensor, ...]:
        if not scores.requires_grad:
            raise LayerError(
                f"the target score does not depend on layer {layers[0]!r}: it was computed "
                "without it (a detached output, or a layer off the path to the output)"
            )
        if scores.ndim == 2:
            grads = batched_gradients(scores, activations)
        else:
            grads = torch.autograd.grad(scores.sum(), activations, allow_unused=True)
        found = []
        for name, grad in zip(layers, grads, strict=True):
            if grad is None:
                raise LayerError(
                    f"the target score does not depend on layer {name!r}; choose a layer on "
                    "the path from the inputs to the scored output"
                )
            found.append(grad)
        return tuple(found)

    # -- forward passes without capture (perturbation methods, metrics) ---------------------

    def core_inputs(self, inputs: ModelInputs) -> torch.Tensor:
        """The validated image, ``(N, C, *S)`` float32 on the model's device."""
        return self._prepare(inputs).image.float()

    def native_image(self, x: torch.Tensor) -> torch.Tensor:
        """A channels-first float32 image in the model's dtype."""
        return self._model_dtype(x)

    @contextlib.contextmanager
    def _scoring(self, precision: Precision, device: torch.device) -> Iterator[None]:
        """The model's lock, eval mode, no autograd, and autocast to ``precision`` where it is
        not float32."""
        autocast = (
            contextlib.nullcontext()
            if precision == "float32"
            else torch.autocast(
                device_type=device.type,
                dtype=torch.bfloat16 if precision == "bfloat16" else torch.float16,
            )
        )
        with self._lock, self._evaluating(), torch.no_grad(), autocast:
            yield

    def _scored(self, outputs: Any, target: Target, count: int) -> ScoredTarget:
        if isinstance(outputs, torch.Tensor) and outputs.is_floating_point():
            outputs = outputs.float()
        return kit.score_outputs(target, outputs, count)

    def forward_scores(
        self, inputs: ModelInputs, target: Target, *, precision: Precision
    ) -> ScoredTarget:
        """The target's scores of ``inputs`` (the image as from ``native_image``).

        The image is handed to the model in the channels-last memory format (the same tensor
        values, laid out NHWC), which the convolutions of PyTorch's CPU and cuDNN backends run
        faster: on EfficientNet-Lite0 on 2 CPU cores a batch of 32 took 1.23 s instead of
        1.71 s. A model that needs contiguous inputs (it calls ``view`` on them) is remembered
        and given them instead; any other error is the model's own.
        """
        prepared = self._prepare(inputs)
        with self._scoring(precision, prepared.image.device):
            return self._scored(self._forward_batch(prepared), target, prepared.count)

    def _forward_batch(self, inputs: ModelInputs) -> Any:
        """A forward pass on a channels-last image, or a contiguous one where the model
        needs."""
        image = inputs.image
        formats = {4: torch.channels_last, 5: torch.channels_last_3d}
        with self._running(inputs):
            if image.ndim in formats and not self._facts.needs_contiguous_inputs:
                try:
                    laid_out = image.contiguous(memory_format=formats[image.ndim])
                    return self._call(inputs.with_image(laid_out))
                except RuntimeError as error:
                    if not _NEEDS_CONTIGUOUS.search(str(error)):
                        raise
                    self._facts.needs_contiguous_inputs = True
            return self._call(inputs)

    def forward_from_layer(
        self, inputs: ModelInputs, layer: str, activations: torch.Tensor, target: Target,
        *, precision: Precision,
    ) -> ScoredTarget:  # fmt: skip
        """Scores of one sample's ``inputs`` with ``layer``'s output replaced by each row of
        ``activations`` ``(B, ...)``.

        The forward runs on the one sample up to the layer, whose hook hands on the ``B``
        replacements, so the prefix runs once; a model whose later layers mix in earlier
        tensors that cannot broadcast from one sample (a concatenation) fails on a size
        mismatch or returns the wrong batch size, and is then run on ``B`` copies instead,
        which is remembered per model.
        """
        module = self._modules()[layer]
        count = int(activations.shape[0])
        prepared = self._prepare(inputs)
        with self._scoring(precision, prepared.image.device):
            if layer not in self._facts.calls:
                self._facts.calls[layer] = self._count_calls(prepared, module)
            expected = self._facts.calls[layer]
            calls: Counter[str] = Counter()

            def replace(name: str) -> Hook:
                def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
                    calls[name] += 1
                    if calls[name] != expected:
                        return None
                    tensor = _first_tensor(output)
                    dtype = tensor.dtype if tensor is not None else activations.dtype
                    return _with_first(output, activations.to(dtype))

                return hook

            with _hooked({layer: module}, replace):
                outputs: Any = None
                if layer not in self._facts.repeats_prefix:
                    with self._running(prepared):
                        try:
                            outputs = self._call(prepared)
                        except RuntimeError as error:
                            out_of_memory = isinstance(error, torch.OutOfMemoryError)
                            if out_of_memory or not _BATCH_MISMATCH.search(str(error)):
                                raise
                    if _batch_size(outputs) != count:
                        self._facts.repeats_prefix.add(layer)
                        outputs = None
                if outputs is None:
                    calls.clear()
                    image = prepared.image
                    copies = prepared.rows(
                        np.zeros(count, np.int64), image.expand(count, *image.shape[1:])
                    )
                    outputs = self._forward_batch(copies)
            if calls[layer] == 0:
                raise LayerError(
                    f"layer {layer!r} was not called during the forward pass of {self._name}; "
                    "choose a layer that the forward pass uses"
                )
            return self._scored(outputs, target, count)

    def _count_calls(self, inputs: ModelInputs, module: torch.nn.Module) -> int:
        """How many times ``module`` runs in one forward pass (a shared module, several)."""
        calls: list[int] = []

        def count(name: str) -> Hook:
            return lambda *args: calls.append(1)

        with _hooked({"layer": module}, count):
            self._forward(inputs)
        return max(len(calls), 1)

    # -- input-space gradients (guided backpropagation, FullGrad) ---------------------------

    def input_gradients(
        self, inputs: ModelInputs, target: Target, *, rule: GradientRule
    ) -> tuple[torch.Tensor, ScoredTarget]:
        """``dS/dx`` of the image, ``(N, C, *S)`` float32, every ReLU passing gradients back
        by ``rule`` (``"guided"``: see :func:`camkit_torch._backprop.guided_relus`)."""
        full = self._backward(inputs, target, rule, ())
        return full.input_gradients, full.scored

    def bias_layers(self, inputs: ModelInputs) -> dict[str, BiasKind]:
        """The modules with a bias on the channel axis of a feature map: convolutions and
        batch normalizations (channels-first), linear layers on channels-last maps."""
        modules = self._modules()
        found: dict[str, BiasKind] = {}
        for row in self.layers(inputs):
            kind = bias_kind(modules[row.name], self.eval_mode)
            expected = "channels_last" if kind == "linear" else "channels_first"
            if kind is not None and row.spatial is not None and row.layout == expected:
                found[row.name] = kind
        return found

    def bias_gradients(
        self, inputs: ModelInputs, layers: Sequence[str], target: Target
    ) -> FullGradients:
        """The image's gradient and ``b[c] * dS/dz`` of each of ``layers``, channels-first."""
        return self._backward(inputs, target, "standard", tuple(layers))

    def _backward(
        self, inputs: ModelInputs, target: Target, rule: GradientRule, layers: tuple[str, ...]
    ) -> FullGradients:
        """One forward pass from the image as a fresh leaf and one backward pass to the image
        and to the outputs of ``layers`` (at their last call). Each of those layers hands on a
        copy of its output, so an in-place op after it (``ReLU(inplace=True)``) leaves the
        output whose gradient is taken as it was."""
        prepared = self._prepare(inputs)
        modules = self._modules()
        outputs_of: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Hook:
            def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
                tensor = _first_tensor(output)
                if tensor is None:
                    return None
                outputs_of[name] = tensor
                return _with_first(output, tensor.clone())

            return hook

        guiding = guided_relus(self.model) if rule == "guided" else contextlib.nullcontext()
        chosen = {name: modules[name] for name in layers}
        with self._lock, _hooked(chosen, keep), self._evaluating():
            with torch.inference_mode(False), torch.enable_grad():
                image = prepared.image.detach().clone().requires_grad_()
                with guiding:
                    outputs = self._forward(prepared.with_image(image))
                scored = self._scored(outputs, target, prepared.count)
                missing = [name for name in layers if name not in outputs_of]
                if missing:
                    raise LayerError(
                        f"layer {missing[0]!r} was not called during the forward pass of "
                        f"{self._name}; choose a layer that the forward pass uses"
                    )
                tensors = [image, *(outputs_of[name] for name in layers)]
                grads = self._gradients_or_zeros(scored.scores, tensors)
        axis = scored.scores.ndim  # the channel axis, after the batch and any target axis
        terms = []
        for name, grad in zip(layers, grads[1:], strict=True):
            module = modules[name]
            if bias_kind(module, self.eval_mode) == "linear":  # channels-last
                grad = grad.movedim(-1, axis)
            bias = effective_bias(module).to(grad.device)
            terms.append(grad * bias.reshape(-1, *(1,) * (grad.ndim - axis - 1)))
        detached = ScoredTarget(scored.scores.detach(), scored.indices)
        return FullGradients(grads[0], tuple(terms), detached)

    def _gradients_or_zeros(
        self, scores: torch.Tensor, tensors: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """``d sum_n S[n] / dt`` for each tensor ``t`` as float32, ``(N, K, ...)`` for ``(N, K)``
        scores; zeros for a tensor the scores do not depend on."""
        found: Sequence[torch.Tensor | None] = [None] * len(tensors)
        if scores.requires_grad and scores.ndim == 2:
            found = batched_gradients(scores, tensors)
        elif scores.requires_grad:
            found = torch.autograd.grad(scores.sum(), tensors, allow_unused=True)
        lead = tuple(scores.shape)
        return [
            torch.zeros((*lead, *t.shape[1:]), device=t.device) if g is None else g.float()
            for t, g in zip(tensors, found, strict=True)
        ]

    # -- helpers --------------------------------------------------------------------------

    def _model_dtype(self, x: torch.Tensor) -> torch.Tensor:
        reference = self._reference()
        return x if reference is None else x.to(reference.dtype)

    def _running(self, inputs: ModelInputs) -> contextlib.AbstractContextManager[None]:
        image = inputs.image
        return kit.running_model(
            self._name, tuple(image.shape), str(image.dtype), channels_last=False
        )

    def _call(self, inputs: ModelInputs) -> Any:
        args, kwargs = inputs.call_arguments()
        return self.model(*args, **kwargs)

    def _forward(self, inputs: ModelInputs) -> Any:
        with self._running(inputs):
            return self._call(inputs)

    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        if not self.eval_mode:
            yield
            return
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training

    def _reference(self) -> torch.Tensor | None:
        return next(itertools.chain(self.model.parameters(), self.model.buffers()), None)

    def _prepare(self, inputs: ModelInputs) -> ModelInputs:
        """The inputs with the image checked and every numpy array a tensor on the model's
        device (the image, and floating arrays, in the model's dtype)."""
        reference = self._reference()
        if reference is not None and reference.device.type == "meta":
            raise InputError(
                f"the parameters of {self._name} are on the meta device: they hold no values "
                "to explain; materialize the model first (model.to_empty(device='cpu') and "
                "model.load_state_dict(...))"
            )
        image = inputs.image
        if isinstance(image, np.ndarray):
            floating = np.issubdtype(image.dtype, np.floating)
            kit.check_image(image.shape, str(image.dtype), floating=floating)
        elif not isinstance(image, torch.Tensor):
            raise InputError(
                f"inputs must be a torch.Tensor or a numpy array, got {type(image).__qualname__}"
            )
        converted = inputs.map_inputs(self._tensor)
        image = converted.image
        kit.check_image(tuple(image.shape), str(image.dtype), floating=image.is_floating_point())
        if reference is not None and image.device != reference.device:
            raise InputError(
                f"inputs are on {image.device} but the model is on {reference.device}; move "
                f"them with inputs.to({str(reference.device)!r})"
            )
        if reference is not None and image.dtype != reference.dtype:
            raise InputError(
                f"inputs have dtype {image.dtype} but the model's parameters are "
                f"{reference.dtype}; convert them with inputs.to({reference.dtype})"
            )
        return converted

    def _tensor(self, array: Any) -> Any:
        """A numpy array as a tensor on the model's device (floating ones in its dtype)."""
        if not isinstance(array, np.ndarray):
            return array
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        reference = self._reference()
        if reference is None:
            return tensor
        dtype = reference.dtype if tensor.is_floating_point() else tensor.dtype
        return tensor.to(reference.device, dtype)

    # -- the rest of the protocol ---------------------------------------------------------

    def classifier_weights(self, classifier: object | None = None) -> torch.Tensor:
        """The ``(K, C)`` weights of ``classifier``, or of the model's last ``nn.Linear``."""
        modules = self._modules()
        if classifier is None:
            linears = [n for n, m in modules.items() if isinstance(m, torch.nn.Linear)]
            if not linears:
                raise LayerError(
                    f"CAM needs a linear classifier but {self._name} has no torch.nn.Linear; "
                    "pass classifier= the module holding the class weights"
                )
            classifier = linears[-1]
        name = kit.find_layer(classifier, modules, self._name, argument="classifier")
        weight = getattr(modules[name], "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            raise LayerError(
                f"classifier={name!r} has no (classes, features) weight matrix; pass the "
                "model's final torch.nn.Linear"
            )
        return weight.detach().float()

    def parameter_layers(self, inputs: ModelInputs) -> list[str]:
        """The modules owning parameters themselves, in forward order (``_randomize``)."""
        return _randomize.parameter_layers(self.model, self.layers(inputs))

    def randomized(self, layers: Sequence[str], seed: int) -> torch.nn.Module:
        """A deep copy with the own parameters of ``layers`` re-initialized (``_randomize``)."""
        return _randomize.randomized(self.model, layers, seed, self._name)

    def input_size(self, inputs: ModelInputs) -> tuple[int, ...]:
        return kit.image_size(tuple(inputs.image.shape))

    def to_numpy(self, array: torch.Tensor) -> np.ndarray:
        array = array.detach()
        if array.is_floating_point():
            array = array.float()
        return array.cpu().numpy()

    def close(self) -> None:
        """Nothing to release: hooks live only during a capture, and the per-model facts are
        weakly keyed, gone with the model."""
