"""Gradients of a Keras 3 model from the framework it runs on: JAX or PyTorch.

The provider writes one function ``run(probes) -> (scores, aux)``: the model's forward pass
with a zero *probe* added to each tensor whose gradient it wants (a layer's output, a layer's
pre-activation, the image), ``scores`` the target's ``(N,)`` or ``(N, K)`` scores and ``aux``
whatever else it returns. The gradient of the scores with respect to a probe is then exactly
the gradient with respect to that tensor, ``d sum_n S[n] / dA`` (``(N, K, ...)`` for ``K``
scores per sample, from the one forward pass). An :class:`Autodiff` runs ``run`` and takes
those gradients in its framework:

- JAX: ``jax.vjp`` of ``run`` with respect to the probes; ``K`` columns vmap the pullback over
  the rows of the identity. Guided backpropagation evaluates ``run``'s jaxpr with every ReLU
  guided (:func:`camkit_jax._guided.guided`).
- PyTorch: the forward pass starts with autograd off and the first probe switches it on, so
  autograd records only from there (the prefix saves nothing for backward), and
  ``torch.autograd.grad`` (batched over the ``K`` columns) takes the gradients. Guided
  backpropagation runs the forward under :func:`camkit_torch._backprop.guided_relus`.

Both return arrays of their framework, on the model's device: the core's math runs there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

__all__ = ["Autodiff", "Probes", "ShapeMemo", "autodiff_for"]

T = TypeVar("T")


class Probes(Protocol):
    """The zero probes of one forward pass, by name."""

    def add(self, name: str, tensor: Any) -> Any:
        """``tensor + probe``: the probe ``name`` entering the forward pass at ``tensor``."""


#: ``run(probes) -> (scores, (tapped, ...))``, ``tapped`` the probed tensors by name; ``None``
#: for probes where no gradients are wanted.
Run = Callable[[Probes | None], tuple[Any, Any]]


class Autodiff(Protocol):
    """How a Keras backend's framework runs a forward pass and takes its gradients."""

    name: str

    def forward(self, function: Callable[[], T]) -> T:
        """``function()`` (a forward pass), recording nothing for gradients."""

    def gradients(
        self, run: Run, names: Sequence[str], guided: bool, model: Any, shapes: ShapeMemo
    ) -> tuple[dict[str, Any | None], Any, Any]:
        """``(gradients by probe, scores, aux)``: the gradient of the scores with respect to
        the probes ``names`` (``None`` where the scores do not depend on one), every ReLU
        guided if ``guided``. ``shapes`` remembers the probes' shapes for later calls of the
        same pass, where a framework needs them before the forward pass runs."""

    def to_numpy(self, array: Any) -> np.ndarray:
        """A framework array on the host."""


@dataclass
class ShapeMemo:
    """The shapes of one pass's probes, once known (kept by the provider, per model)."""

    shapes: dict[str, tuple[int, ...]] | None = None


class _Added:
    """Probes given as arrays (JAX: the arguments being differentiated)."""

    def __init__(self, arrays: Mapping[str, Any]) -> None:
        self.arrays = arrays

    def add(self, name: str, tensor: Any) -> Any:
        return tensor + self.arrays[name].astype(tensor.dtype)


class JaxAutodiff:
    name = "jax"

    def __init__(self) -> None:
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp

    def forward(self, function: Callable[[], T]) -> T:
        return function()

    def gradients(
        self, run: Run, names: Sequence[str], guided: bool, model: Any, shapes: ShapeMemo
    ) -> tuple[dict[str, Any | None], Any, Any]:
        jax, jnp = self.jax, self.jnp
        if shapes.shapes is None:  # once per pass: eval_shape keeps a little per function
            tapped = jax.eval_shape(lambda: run(None))[1][0]  # no compute
            shapes.shapes = {name: tuple(tapped[name].shape) for name in names}

        def probed(arrays: dict[str, Any]) -> tuple[Any, Any]:
            return run(_Added(arrays))

        if guided:
            from camkit_jax._guided import guided as guided_function

            probed = guided_function(probed)
        zeros = {name: jnp.zeros(shapes.shapes[name], jnp.float32) for name in names}
        scores, pullback, aux = jax.vjp(probed, zeros, has_aux=True)
        if scores.ndim == 1:  # d sum_n S[n] / dA
            (grads,) = pullback(jnp.ones_like(scores))
        else:  # d sum_n S[n, k] / dA for each k, as (N, K, ...)
            columns = scores.shape[1]
            eye = jnp.eye(columns, dtype=scores.dtype)
            cotangents = jnp.broadcast_to(eye[:, None], (columns, *scores.shape))
            (stacked,) = jax.vmap(pullback)(cotangents)
            grads = {name: jnp.moveaxis(g, 0, 1) for name, g in stacked.items()}
        # a probe the scores do not reach gets zeros (as camkit_jax's captures do)
        return dict(grads), scores, aux

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)


class _Leaves:
    """Probes made where they enter (PyTorch): zero leaves, autograd switched on from the
    first, so that the prefix before it records nothing for backward."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.leaves: dict[str, Any] = {}

    def add(self, name: str, tensor: Any) -> Any:
        self.torch.set_grad_enabled(True)  # until the forward's ``no_grad`` block ends
        leaf = self.torch.zeros_like(tensor, requires_grad=True)
        self.leaves[name] = leaf
        return tensor + leaf


class TorchAutodiff:
    name = "torch"

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def forward(self, function: Callable[[], T]) -> T:
        with self.torch.no_grad():
            return function()

    def gradients(
        self, run: Run, names: Sequence[str], guided: bool, model: Any, shapes: ShapeMemo
    ) -> tuple[dict[str, Any | None], Any, Any]:
        torch = self.torch
        from camkit_torch._backprop import guided_relus
        from camkit_torch._provider import batched_gradients

        probes = _Leaves(torch)
        with torch.no_grad(), guided_relus(model) if guided else contextlib.nullcontext():
            scores, aux = run(probes)
        leaves = [probes.leaves[name] for name in names]
        if not scores.requires_grad:
            found: tuple[Any, ...] = (None,) * len(leaves)
        elif scores.ndim == 1:
            found = torch.autograd.grad(scores.sum(), leaves, allow_unused=True)
        else:
            found = batched_gradients(scores, leaves)
        return dict(zip(names, found, strict=True)), scores.detach(), _detached(torch, aux)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array.detach().cpu())


def _detached(torch: Any, structure: Any) -> Any:
    if isinstance(structure, torch.Tensor):
        return structure.detach()
    if isinstance(structure, list | tuple):
        return type(structure)(_detached(torch, item) for item in structure)
    if isinstance(structure, dict):
        return {key: _detached(torch, value) for key, value in structure.items()}
    return structure


def autodiff_for(backend: str) -> Autodiff:
    """The :class:`Autodiff` of the framework a Keras backend names."""
    return JaxAutodiff() if backend == "jax" else TorchAutodiff()
