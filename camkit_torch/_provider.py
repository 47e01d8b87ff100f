"""The PyTorch provider: activations and ``dS/dA`` from an eager ``torch.nn.Module``.

How a capture runs, and why:

- The forward pass starts with autograd off. The first hooked layer switches it on and hands on
  a fresh leaf ``A = output.detach().requires_grad_()``, so autograd records only from that
  layer on: the prefix saves nothing for backward (on EfficientNet-Lite0 a grad-enabled forward
  costs 1.26x an inference one; this costs about 1.02x).
- Each hooked layer passes on a copy of its output (``A.clone()``), so an in-place op that
  follows (``ReLU(inplace=True)``) changes the copy, never the captured activation.
- Gradients come from ``torch.autograd.grad(sum_n S[n], A)``: with respect to the captured
  activations only, never ``backward()`` into the parameters, whose ``.grad`` stays untouched.
- A module called several times per forward (a shared activation module) is captured at its
  last call. Each module's call count is remembered per model, so from the second capture on
  the earlier calls run untouched and autograd starts at the last one.
- What a probe forward learns (the automatic layer per input shape, call counts) is kept per
  model, weakly (``camkit.provider.ModelTable``), so one-call ``camkit.explain`` pays for the
  probe only once and no model is kept alive by camkit.
- Hooks, train/eval flags and the grad mode are restored on every exit path, and every call
  that runs the model holds the model's lock: forward hooks fire for any thread that calls the
  model, so two captures must never overlap on one model.

Built from the public names of :mod:`camkit.provider` only.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from camkit import provider as kit
from camkit.provider import (
    CLASSIFIER_WEIGHTS,
    FORWARD_FROM_LAYER,
    FORWARD_SCORES,
    BackendError,
    Capture,
    InputError,
    LayerError,
    Precision,
    ScoredTarget,
    Target,
)

__all__ = ["TorchProvider"]

Hook = Callable[[torch.nn.Module, Any, Any], Any]
#: What torch says when an op needs contiguous inputs (``view`` on channels-last memory).
_NEEDS_CONTIGUOUS = re.compile(r"contiguous|view size is not compatible")
#: What torch says when tensors of different batch sizes meet (a concatenation, ``view(1, -1)``).
_BATCH_MISMATCH = re.compile(r"size|shape|dimension", re.IGNORECASE)


class _ModelFacts:
    """What camkit learned about one model from its forward passes."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}  # module name -> calls per forward
        self.repeats_prefix: set[str] = set()  # layers whose prefix cannot run on one sample
        self.needs_contiguous_inputs = False  # the model rejects channels-last inputs


_FACTS: kit.ModelTable[_ModelFacts] = kit.ModelTable(_ModelFacts)


def _is_feature_map(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and shape[2] * shape[3] > 1  # (N, C, H, W)


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


class TorchProvider:
    """Captures activations and gradients of a ``torch.nn.Module`` on its own device.

    Args:
        model: the module to explain.
        eval_mode: run the model in eval mode (dropout off, batch-norm statistics frozen) during
            each capture and restore every submodule's own mode afterwards.
    """

    capabilities = frozenset({CLASSIFIER_WEIGHTS, FORWARD_SCORES, FORWARD_FROM_LAYER})

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

    def default_layer(self, inputs: Any) -> str:
        x = self._prepare(inputs)
        return kit.automatic_layer(self.model, tuple(x.shape), lambda: self._probe(x))

    def _probe(self, x: torch.Tensor) -> str:
        """Run the model once, recording every module's output shape in call order."""
        calls: list[tuple[str, tuple[int, ...]]] = []

        def record(name: str) -> Hook:
            def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
                if isinstance(output, torch.Tensor):
                    calls.append((name, tuple(output.shape)))

            return hook

        with self._lock, _hooked(self._modules(), record), self._evaluating(), torch.no_grad():
            self._forward(x)
        self._facts.calls.update(Counter(name for name, _ in calls))
        return kit.last_spatial_layer(calls, _is_feature_map, self._name, tuple(x.shape))

    # -- capture --------------------------------------------------------------------------

    def capture(
        self, inputs: Any, layers: Sequence[str], target: Target, *, gradients: bool
    ) -> Capture:
        x = self._prepare(inputs)
        with self._lock:
            for _ in range(2):  # a second try only if a shared layer was called fewer times
                result = self._capture_once(x, layers, target, gradients)
                if result is not None:
                    return result
        raise LayerError(f"layers {list(layers)!r} were not captured; their call count varies")

    def _capture_once(
        self, x: torch.Tensor, layers: Sequence[str], target: Target, gradients: bool
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
                if not isinstance(output, torch.Tensor):
                    raise LayerError(
                        f"layer {name!r} returns {type(output).__name__}, not a tensor; choose "
                        "one of its submodules that returns a tensor"
                    )
                if not gradients:
                    captured[name] = output.detach().clone()
                    return None
                if torch.is_grad_enabled() and output.requires_grad:
                    activation = output  # already on the graph an earlier layer started
                else:
                    torch.set_grad_enabled(True)
                    activation = output.detach().requires_grad_()
                captured[name] = activation
                return activation.clone()

            return hook

        count = int(x.shape[0])
        grad_mode = torch.is_grad_enabled()
        chosen = {name: modules[name] for name in layers}
        try:
            with _hooked(chosen, capture_hook), self._evaluating(), torch.inference_mode(False):
                with torch.no_grad():
                    outputs = self._forward(x)
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
        grads = torch.autograd.grad(scores.sum(), activations, allow_unused=True)
        for name, grad in zip(layers, grads, strict=True):
            if grad is None:
                raise LayerError(
                    f"the target score does not depend on layer {name!r}; choose a layer on "
                    "the path from the inputs to the scored output"
                )
        return grads

    # -- forward passes without capture (perturbation methods, metrics) ---------------------

    def core_inputs(self, inputs: Any) -> torch.Tensor:
        """The validated inputs, ``(N, C, H, W)`` float32 on the model's device."""
        return self._prepare(inputs).float()

    def native_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Channels-first float32 inputs in the model's dtype, for ``capture``."""
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
        self, x: torch.Tensor, target: Target, *, precision: Precision
    ) -> ScoredTarget:
        """The target's scores of a channels-first batch (as from ``core_inputs``).

        The batch is handed to the model in the channels-last memory format (the same tensor
        values, laid out NHWC), which the convolutions of PyTorch's CPU and cuDNN backends run
        faster: on EfficientNet-Lite0 on 2 CPU cores a batch of 32 took 1.23 s instead of
        1.71 s. A model that needs contiguous inputs (it calls ``view`` on them) is remembered
        and given them instead; any other error is the model's own.
        """
        x = self._model_dtype(x)
        with self._scoring(precision, x.device):
            return self._scored(self._forward_batch(x), target, int(x.shape[0]))

    def _forward_batch(self, x: torch.Tensor) -> Any:
        """A forward pass on channels-last inputs, or contiguous ones where the model needs."""
        with self._running(x):
            if x.ndim == 4 and not self._facts.needs_contiguous_inputs:
                try:
                    return self.model(x.contiguous(memory_format=torch.channels_last))
                except RuntimeError as error:
                    if not _NEEDS_CONTIGUOUS.search(str(error)):
                        raise
                    self._facts.needs_contiguous_inputs = True
            return self.model(x)

    def forward_from_layer(
        self, x: torch.Tensor, layer: str, activations: torch.Tensor, target: Target,
        *, precision: Precision,
    ) -> ScoredTarget:  # fmt: skip
        """Scores of one sample ``x`` ``(1, ...)`` with ``layer``'s output replaced by each row
        of ``activations`` ``(B, ...)``.

        The forward runs on the one sample up to the layer, whose hook hands on the ``B``
        replacements, so the prefix runs once; a model whose later layers mix in earlier
        tensors that cannot broadcast from one sample (a concatenation) fails on a size
        mismatch or returns the wrong batch size, and is then run on ``B`` copies instead,
        which is remembered per model.
        """
        module = self._modules()[layer]
        count = int(activations.shape[0])
        x = self._model_dtype(x)
        with self._scoring(precision, x.device):
            if layer not in self._facts.calls:
                self._facts.calls[layer] = self._count_calls(x, module)
            expected = self._facts.calls[layer]
            calls: Counter[str] = Counter()

            def replace(name: str) -> Hook:
                def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
                    calls[name] += 1
                    return activations.to(output.dtype) if calls[name] == expected else None

                return hook

            with _hooked({layer: module}, replace):
                outputs: Any = None
                if layer not in self._facts.repeats_prefix:
                    with self._running(x):
                        try:
                            outputs = self.model(x)
                        except RuntimeError as error:
                            out_of_memory = isinstance(error, torch.OutOfMemoryError)
                            if out_of_memory or not _BATCH_MISMATCH.search(str(error)):
                                raise
                    if _batch_size(outputs) != count:
                        self._facts.repeats_prefix.add(layer)
                        outputs = None
                if outputs is None:
                    calls.clear()
                    outputs = self._forward_batch(x.expand(count, *x.shape[1:]))
            if calls[layer] == 0:
                raise LayerError(
                    f"layer {layer!r} was not called during the forward pass of {self._name}; "
                    "choose a layer that the forward pass uses"
                )
            return self._scored(outputs, target, count)

    def _count_calls(self, x: torch.Tensor, module: torch.nn.Module) -> int:
        """How many times ``module`` runs in one forward pass (a shared module, several)."""
        calls: list[int] = []

        def count(name: str) -> Hook:
            return lambda *args: calls.append(1)

        with _hooked({"layer": module}, count):
            self._forward(x)
        return max(len(calls), 1)

    # -- helpers --------------------------------------------------------------------------

    def _model_dtype(self, x: torch.Tensor) -> torch.Tensor:
        reference = self._reference()
        return x if reference is None else x.to(reference.dtype)

    def _running(self, x: torch.Tensor) -> contextlib.AbstractContextManager[None]:
        return kit.running_model(self._name, tuple(x.shape), str(x.dtype), channels_last=False)

    def _forward(self, x: torch.Tensor) -> Any:
        with self._running(x):
            return self.model(x)

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

    def _prepare(self, inputs: Any) -> torch.Tensor:
        reference = self._reference()
        if reference is not None and reference.device.type == "meta":
            raise InputError(
                f"the parameters of {self._name} are on the meta device: they hold no values "
                "to explain; materialize the model first (model.to_empty(device='cpu') and "
                "model.load_state_dict(...))"
            )
        if isinstance(inputs, np.ndarray):
            floating = np.issubdtype(inputs.dtype, np.floating)
            kit.check_batch(inputs.shape, str(inputs.dtype), floating=floating)
            tensor = torch.from_numpy(np.ascontiguousarray(inputs))
            if reference is not None:
                tensor = tensor.to(reference.device, reference.dtype)
            inputs = tensor
        if not isinstance(inputs, torch.Tensor):
            raise InputError(
                f"inputs must be a torch.Tensor or a numpy array, got {type(inputs).__qualname__}"
            )
        floating = inputs.is_floating_point()
        kit.check_batch(tuple(inputs.shape), str(inputs.dtype), floating=floating)
        if reference is not None and inputs.device != reference.device:
            raise InputError(
                f"inputs are on {inputs.device} but the model is on {reference.device}; move "
                f"them with inputs.to({str(reference.device)!r})"
            )
        if reference is not None and inputs.dtype != reference.dtype:
            raise InputError(
                f"inputs have dtype {inputs.dtype} but the model's parameters are "
                f"{reference.dtype}; convert them with inputs.to({reference.dtype})"
            )
        return inputs

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

    def input_size(self, inputs: Any) -> tuple[int, int]:
        return int(inputs.shape[-2]), int(inputs.shape[-1])

    def to_numpy(self, array: torch.Tensor) -> np.ndarray:
        array = array.detach()
        if array.is_floating_point():
            array = array.float()
        return array.cpu().numpy()

    def close(self) -> None:
        """Nothing to release: hooks live only during a capture, and the per-model facts are
        weakly keyed, gone with the model."""
