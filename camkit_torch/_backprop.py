"""What input-space backpropagation needs from PyTorch: guided ReLUs and layers' biases.

Guided ReLUs: :func:`guided_relus` pushes a ``TorchFunctionMode`` for the duration of one
forward pass. Modes live on a thread-local stack, so only the calling thread's ops are seen:
every ``torch.relu``, ``torch.nn.functional.relu`` (what ``nn.ReLU`` calls), ``Tensor.relu``
and their in-place forms, and the capped ReLUs ``relu6`` and ``hardtanh`` from 0 (what
``nn.ReLU6`` calls), then run :class:`GuidedReLU`, whose backward pass is Springenberg et
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


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str,
              default: Any) -> Any:  # fmt: skip
    return args[index] if len(args) > index else kwargs.get(name, default)


def _as_relu(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[torch.Tensor, float | None, bool] | None:
    """``(x, cap, in place)`` when ``func(*args, **kwargs)`` is a ReLU, ``max(x, 0)`` or
    capped, ``min(max(x, 0), cap)`` (``relu6``, and ``hardtanh`` from 0, which ``nn.ReLU6``
    calls); else ``None``."""
    if func in _RELUS or func in _RELUS_IN_PLACE:
        in_place = func in _RELUS_IN_PLACE or (
            func is F.relu and bool(_argument(args, kwargs, 1, "inplace", False))
        )
        return args[0], None, in_place
    if func is F.relu6:
        return args[0], 6.0, bool(_argument(args, kwargs, 1, "inplace", False))
    if func in (F.hardtanh, F.hardtanh_) and _argument(args, kwargs, 1, "min_val", -1.0) == 0:
        in_place = func is F.hardtanh_ or bool(_argument(args, kwargs, 3, "inplace", False))
        return args[0], float(_argument(args, kwargs, 2, "max_val", 1.0)), in_place
    return None


class _GuidedMode(TorchFunctionMode):
    """Runs every ReLU of the calling thread as :class:`GuidedReLU` (in place where asked); a
    capped ReLU (ReLU6) as :class:`GuidedReLU` then the cap, whose derivative ``[y < cap]``
    stays standard: ``dL/dx = [0 < x < cap] * ReLU(dL/dy)``."""

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:  # fmt: skip
        kwargs = kwargs or {}
        relu = _as_relu(func, args, kwargs)
        if relu is None:
            return func(*args, **kwargs)
        x, cap, in_place = relu
        guided = GuidedReLU.apply(x)
        if cap is not None:
            guided = guided.clamp(max=cap)
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
