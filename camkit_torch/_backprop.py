"""What input-space backpropagation needs from PyTorch: guided ReLUs and layers' biases.

Guided ReLUs: :func:`guided_relus` pushes a ``TorchFunctionMode`` for the duration of one
forward pass. Modes live on a thread-local stack, so only the calling thread's ops are seen:
every ``torch.relu``, ``torch.nn.functional.relu`` (what ``nn.ReLU`` calls), ``Tensor.relu``
and their in-place forms then run :class:`GuidedReLU`, whose backward pass is Springenberg et
al.'s rule. No hook, attribute or module of the model is touched, and functional ReLUs in a
``forward`` are reached as well as ``nn.ReLU`` modules. TorchScript modules run outside
Python's dispatch and cannot be reached: they are refused.

Biases: a convolution's or linear layer's ``bias``, and a batch normalization's effective bias
in inference, ``beta - running_mean * gamma / sqrt(running_var + eps)`` (its affine map
``gamma (z - mean) / sqrt(var + eps) + beta`` written as ``scale * z + bias``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from camkit.provider import BiasKind, CapabilityError

__all__ = ["GuidedReLU", "bias_kind", "effective_bias", "guided_relus"]

nn = torch.nn
F = torch.nn.functional


class GuidedReLU(torch.autograd.Function):
    """``max(x, 0)`` whose backward pass is ``dL/dx = [x > 0] * ReLU(dL/dy)``.

    It saves the mask ``x > 0``, never ``x``, so that an in-place ReLU may overwrite ``x``;
    ``generate_vmap_rule`` lets one batched backward serve ``K`` scores per sample."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clamp(min=0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0] > 0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (positive,) = ctx.saved_tensors
        return torch.where(positive, grad.clamp(min=0), 0.0)


_RELUS: frozenset[Callable[..., Any]] = frozenset({torch.relu, F.relu, torch.Tensor.relu})
_RELUS_IN_PLACE: frozenset[Callable[..., Any]] = frozenset(
    {torch.relu_, F.relu_, torch.Tensor.relu_}
)


class _GuidedMode(TorchFunctionMode):
    """Runs every ReLU of the calling thread as :class:`GuidedReLU` (in place where asked)."""

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:  # fmt: skip
        kwargs = kwargs or {}
        if func not in _RELUS and func not in _RELUS_IN_PLACE:
            return func(*args, **kwargs)
        x = args[0]
        in_place = func in _RELUS_IN_PLACE or (
            func is F.relu and bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        )
        guided = GuidedReLU.apply(x)
        return x.copy_(guided) if in_place else guided


@contextlib.contextmanager
def guided_relus(model: nn.Module) -> Iterator[None]:
    """Guide every ReLU the calling thread runs while the context is open; a
    ``CapabilityError`` for a model holding TorchScript, whose ReLUs cannot be reached."""
    scripted = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if isinstance(module, torch.jit.ScriptModule)
    ]
    if scripted:
        raise CapabilityError(
            f"guided backpropagation: {scripted[0]!r} is TorchScript, whose ReLUs run outside "
            "Python and cannot be guided; explain the eager (unscripted) model"
        )
    with _GuidedMode():
        yield


def bias_kind(module: nn.Module, eval_mode: bool) -> BiasKind | None:
    """What holds ``module``'s bias, or ``None`` for a module without one (a batch
    normalization without running statistics, or one left in training mode, normalizes by the
    batch's own: it has no fixed bias)."""
    if isinstance(module, nn.modules.conv._ConvNd) and module.bias is not None:
        return "convolution"
    if isinstance(module, nn.Linear) and module.bias is not None:
        return "linear"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        inference = eval_mode or not module.training
        return "normalization" if inference and module.running_mean is not None else None
    return None


def effective_bias(module: nn.Module) -> torch.Tensor:
    """``(C,)`` float32: ``module``'s bias, or a batch normalization's effective bias."""
    with torch.no_grad():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            mean, variance = module.running_mean, module.running_var
            assert mean is not None and variance is not None  # bias_kind admits no other
            scale = torch.rsqrt(variance.float() + module.eps)
            if module.weight is not None:
                scale = scale * module.weight.float()
            shift = torch.zeros_like(scale) if module.bias is None else module.bias.float()
            return shift - mean.float() * scale
        bias = module.bias
        assert isinstance(bias, torch.Tensor)  # bias_kind admits no other
        return bias.detach().float()
