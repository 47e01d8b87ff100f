"""Randomized copies of a ``torch.nn.Module``, for the parameter-randomization sanity check.

The model is deep-copied (under its lock, so that no capture's hooks are copied along) and the
copy's chosen modules re-initialized in place; the user's model is only read. A module is
re-initialized by its own ``reset_parameters()``, as PyTorch initializes it, with the global
RNG seeded per module inside ``torch.random.fork_rng`` (the user's RNG state comes back);
whatever else that call resets (a batch norm's running statistics, a child's parameters) is
put back, so only the module's own parameters change. A module without ``reset_parameters``
gets seeded normal draws at each parameter's root mean square.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence

import torch

from camkit import provider as kit
from camkit.provider import CapabilityError, LayerTable

__all__ = ["parameter_layers", "randomized"]


def parameter_layers(model: torch.nn.Module, table: LayerTable) -> list[str]:
    """The modules owning parameters themselves (``""`` for the root), in forward order."""
    owners = [
        name
        for name, module in model.named_modules()
        if next(module.parameters(recurse=False), None) is not None
    ]
    return kit.forward_order(owners, table, ".")


def _rescaled_normal(parameter: torch.Tensor, seed: int) -> torch.Tensor:
    """Seeded standard normal draws times ``parameter``'s root mean square (see
    :func:`camkit.provider.rescaled_normal`), drawn on the host in float32."""
    scale = parameter.detach().float().pow(2).mean().sqrt().cpu()
    draws = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(seed))
    return (draws * scale).to(parameter.device, parameter.dtype)


def _reinitialize(module: torch.nn.Module, name: str, seed: int) -> None:
    """Re-initialize ``module``'s own parameters (it belongs to a private copy)."""
    own = dict(module.named_parameters(recurse=False))
    reset = getattr(module, "reset_parameters", None)
    if not callable(reset):
        for key, parameter in own.items():
            parameter.copy_(_rescaled_normal(parameter, kit.parameter_seed(seed, name, key)))
        return
    everything = itertools.chain(module.named_parameters(), module.named_buffers())
    kept = {key: t.detach().clone() for key, t in everything if key not in own}
    cuda = sorted({p.device.index or 0 for p in own.values() if p.device.type == "cuda"})
    layer_seed = kit.parameter_seed(seed, name)
    # only the generators the module draws from are seeded, and fork_rng restores them
    # (torch.manual_seed would reseed every CUDA device, outside what fork_rng restores)
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(layer_seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(layer_seed)
        reset()
    for key, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
        if key in kept:
            tensor.copy_(kept[key])


def randomized(
    model: torch.nn.Module, layers: Sequence[str], seed: int, model_name: str
) -> torch.nn.Module:
    """A deep copy of ``model`` with the own parameters of ``layers`` re-initialized."""
    known = dict(model.named_modules())
    names = [kit.find_layer(name, known, model_name, argument="layers") for name in layers]
    with kit.model_lock(model):
        try:
            duplicate = copy.deepcopy(model)
        except Exception as error:
            raise CapabilityError(
                f"camkit cannot copy {model_name} to randomize its parameters: copy.deepcopy "
                f"raised {type(error).__name__}: {error}; make the model deep-copyable"
            ) from error
    modules = dict(duplicate.named_modules())
    with torch.no_grad():
        for name in names:
            _reinitialize(modules[name], name, seed)
    return duplicate
