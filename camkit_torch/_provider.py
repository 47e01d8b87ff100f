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
  model in a weak-keyed table, so one-call ``camkit.explain`` pays for the probe only once and
  no model is kept alive by camkit.
- Hooks, train/eval flags and the grad mode are restored on every exit path.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from camkit import (
    CLASSIFIER_WEIGHTS,
    FORWARD_FROM_LAYER,
    FORWARD_SCORES,
    BackendError,
    Capture,
    InputError,
    LayerError,
    TargetError,
)
from camkit._errors import closest_names
from camkit._layers import last_spatial_layer
from camkit._targets import ScoredTarget
from camkit.targets import CallableTarget, Target

__all__ = ["TorchProvider"]


class _ModelFacts:
    """What camkit learned about one model from its forward passes."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}  # module name -> calls per forward
        self.default_layers: dict[tuple[int, ...], str] = {}  # input shape -> automatic layer
        self.repeats_prefix: set[str] = set()  # layers whose prefix cannot run on one sample
        self.needs_contiguous_inputs = False  # the model rejects channels-last inputs


_FACTS: weakref.WeakKeyDictionary[torch.nn.Module, _ModelFacts] = weakref.WeakKeyDictionary()


def _is_feature_map(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and shape[2] * shape[3] > 1  # (N, C, H, W)


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
        self._facts = _FACTS.setdefault(model, _ModelFacts())

    # -- layers ---------------------------------------------------------------------------

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {name: module for name, module in self.model.named_modules() if name}

    def layer_names(self) -> list[str]:
        return list(self._modules())

    def resolve_layer(self, layer: object) -> str:
        modules = self._modules()
        model_name = type(self.model).__name__
        if isinstance(layer, str):
            if layer in modules:
                return layer
            raise LayerError(
                f"layer={layer!r} is not a submodule of {model_name}; "
                f"{closest_names(layer, modules)}"
            )
        if isinstance(layer, torch.nn.Module):
            for name, module in modules.items():
                if module is layer:
                    return name
            raise LayerError(
                f"layer={type(layer).__name__}(...) is not a submodule of {model_name}; pass "
                "a module from model.named_modules() or its dotted name"
            )
        raise LayerError(
            f"layer={layer!r} is neither a name nor a torch.nn.Module; pass a dotted name such "
            "as 'layer4.2' or the submodule itself"
        )

    def default_layer(self, inputs: Any) -> str:
        x = self._prepare(inputs)
        known = self._facts.default_layers.get(tuple(x.shape))
        if known is not None:
            return known
        modules = self._modules()
        calls: list[tuple[str, tuple[int, ...]]] = []

        def record(name: str) -> Any:
            def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
                if isinstance(output, torch.Tensor):
                    calls.append((name, tuple(output.shape)))

            return hook

        handles = [m.register_forward_hook(record(n)) for n, m in modules.items()]
        try:
            with self._evaluating(), torch.no_grad():
                self._forward(x)
        finally:
            for handle in handles:
                handle.remove()
        self._facts.calls.update(Counter(name for name, _ in calls))
        name = last_spatial_layer(calls, _is_feature_map, type(self.model).__name__, tuple(x.shape))
        self._facts.default_layers[tuple(x.shape)] = name
        return name

    # -- capture --------------------------------------------------------------------------

    def capture(
        self, inputs: Any, layers: Sequence[str], target: Target, *, gradients: bool
    ) -> Capture:
        x = self._prepare(inputs)
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

        def capture_hook(name: str) -> Any:
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

        handles = [modules[name].register_forward_hook(capture_hook(name)) for name in layers]
        grad_mode = torch.is_grad_enabled()
        try:
            with self._evaluating(), torch.inference_mode(False), torch.no_grad():
                outputs = self._forward(x)
                self._check_outputs(outputs, target)
                scored = target.resolve(outputs)
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
            for handle in handles:
                handle.remove()
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
                f"layer {never[0]!r} was not called during the forward pass of "
                f"{type(self.model).__name__}; choose a layer that the forward pass uses"
            )
        for name in missing:
            self._facts.calls[name] = calls[name]

    @staticmethod
    def _check_outputs(outputs: Any, target: Target) -> None:
        if not isinstance(outputs, torch.Tensor) and not isinstance(target, CallableTarget):
            raise TargetError(
                f"the model returns {type(outputs).__name__}, not a tensor; pass target= a "
                "callable that takes those outputs and returns one score per sample"
            )

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
    def _scoring(self, precision: str, device: torch.device) -> Iterator[None]:
        """Eval mode, no autograd, and autocast to ``precision`` where it is not float32."""
        autocast = (
            contextlib.nullcontext()
            if precision == "float32"
            else torch.autocast(
                device_type=device.type,
                dtype=torch.bfloat16 if precision == "bfloat16" else torch.float16,
            )
        )
        with self._evaluating(), torch.no_grad(), autocast:
            yield

    def _scored(self, outputs: Any, target: Target) -> ScoredTarget:
        self._check_outputs(outputs, target)
        if isinstance(outputs, torch.Tensor) and outputs.is_floating_point():
            outputs = outputs.float()
        scored = target.resolve(outputs)
        return ScoredTarget(scored.scores.float(), scored.indices)

    def forward_scores(self, x: torch.Tensor, target: Target, *, precision: str) -> ScoredTarget:
        """The target's scores of a channels-first batch (as from ``core_inputs``).

        The batch is handed to the model in the channels-last memory format (the same tensor
        values, laid out NHWC), which the convolutions of PyTorch's CPU and cuDNN backends run
        faster: on EfficientNet-Lite0 on 2 CPU cores a batch of 32 took 1.23 s instead of
        1.71 s. A model that needs contiguous inputs (it calls ``view`` on them) is remembered
        and given them instead.
        """
        x = self._model_dtype(x)
        with self._scoring(precision, x.device):
            return self._scored(self._forward_batch(x), target)

    def _forward_batch(self, x: torch.Tensor) -> Any:
        """A forward pass on channels-last inputs, or contiguous ones where the model needs."""
        if x.ndim == 4 and not self._facts.needs_contiguous_inputs:
            try:
                return self.model(x.contiguous(memory_format=torch.channels_last))
            except RuntimeError:
                self._facts.needs_contiguous_inputs = True
        return self._forward(x)

    def forward_from_layer(
        self, x: torch.Tensor, layer: str, activations: torch.Tensor, target: Target,
        *, precision: str,
    ) -> ScoredTarget:  # fmt: skip
        """Scores of one sample ``x`` ``(1, ...)`` with ``layer``'s output replaced by each row
        of ``activations`` ``(B, ...)``.

        The forward runs on the one sample up to the layer, whose hook hands on the ``B``
        replacements, so the prefix runs once; a model whose later layers mix in earlier
        tensors that cannot broadcast from one sample (a concatenation) is run on ``B`` copies
        instead, which is remembered per model.
        """
        module = self._modules()[layer]
        if layer not in self._facts.calls:
            self._facts.calls[layer] = self._count_calls(x, module)
        expected = self._facts.calls[layer]
        calls: Counter[str] = Counter()

        def replace(module: torch.nn.Module, args: Any, output: Any) -> Any:
            calls[layer] += 1
            if calls[layer] == expected:
                return activations.to(output.dtype)
            return None

        count = activations.shape[0]
        x = self._model_dtype(x)
        handle = module.register_forward_hook(replace)
        try:
            with self._scoring(precision, x.device):
                outputs: Any = None
                if layer not in self._facts.repeats_prefix:
                    try:
                        outputs = self.model(x)
                    except RuntimeError:
                        outputs = None
                    if not isinstance(outputs, torch.Tensor) or outputs.shape[0] != count:
                        self._facts.repeats_prefix.add(layer)
                        outputs = None
                if outputs is None:
                    calls.clear()
                    outputs = self._forward_batch(x.expand(count, *x.shape[1:]))
                if calls[layer] == 0:
                    raise LayerError(
                        f"layer {layer!r} was not called during the forward pass of "
                        f"{type(self.model).__name__}; choose a layer that the forward pass uses"
                    )
                return self._scored(outputs, target)
        finally:
            handle.remove()

    def _count_calls(self, x: torch.Tensor, module: torch.nn.Module) -> int:
        """How many times ``module`` runs in one forward pass (a shared module, several)."""
        calls = []
        handle = module.register_forward_hook(lambda *args: calls.append(1))
        try:
            with self._evaluating(), torch.no_grad():
                self._forward(self._model_dtype(x))
        finally:
            handle.remove()
        return max(len(calls), 1)

    # -- helpers --------------------------------------------------------------------------

    def _model_dtype(self, x: torch.Tensor) -> torch.Tensor:
        reference = self._reference()
        return x if reference is None else x.to(reference.dtype)

    def _forward(self, x: torch.Tensor) -> Any:
        try:
            return self.model(x)
        except (LayerError, TargetError, InputError):
            raise
        except (RuntimeError, ValueError, TypeError) as error:
            raise InputError(
                f"{type(self.model).__name__} failed on inputs of shape {tuple(x.shape)} and "
                f"dtype {x.dtype}: {type(error).__name__}: {error}"
            ) from error

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
        if isinstance(inputs, np.ndarray):
            if not np.issubdtype(inputs.dtype, np.floating):
                raise InputError(
                    f"inputs have dtype {inputs.dtype}; the model needs floating-point inputs, "
                    "scaled and normalized as in training"
                )
            tensor = torch.from_numpy(np.ascontiguousarray(inputs))
            if reference is not None:
                tensor = tensor.to(reference.device, reference.dtype)
            inputs = tensor
        if not isinstance(inputs, torch.Tensor):
            raise InputError(
                f"inputs must be a torch.Tensor or a numpy array, got {type(inputs).__qualname__}"
            )
        if inputs.ndim != 4:
            raise InputError(
                f"inputs have shape {tuple(inputs.shape)}; expected a batch (N, C, H, W) — add a "
                "batch axis with inputs[None] for a single image"
            )
        if not inputs.is_floating_point():
            raise InputError(
                f"inputs have dtype {inputs.dtype}; the model needs floating-point inputs, "
                "scaled and normalized as in training (for example inputs.float() / 255)"
            )
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
                    f"CAM needs a linear classifier but {type(self.model).__name__} has no "
                    "torch.nn.Linear; pass classifier= the module holding the class weights"
                )
            classifier = linears[-1]
        name = self.resolve_layer(classifier)
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
