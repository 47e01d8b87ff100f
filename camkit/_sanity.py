"""Sanity checks for saliency maps: do the maps change when the model's parameters, or the
labels it learned from, are randomized?

Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018. A method whose maps survive
the randomization of the weights that compute the prediction does not explain the prediction.

- Model-parameter randomization (section 4): the layers that own parameters are re-initialized
  from the output down, one more at each step (*cascading*), or one at a time with the rest
  trained (*independent*); at each step the same inputs are explained with the same method,
  layer and class, and the maps are compared with the trained model's. The backend builds each
  randomized model anew (the capability ``parameter_randomization``); the user's model is
  never changed.
- Data randomization (section 5): camkit cannot retrain a model; the user trains a copy of the
  architecture on permuted labels and :func:`data_randomization` compares the two models'
  maps.

Maps are compared by Spearman's rank correlation (of the values and of their absolute
values), SSIM on the maps rescaled to ``[0, 1]``, and the top-k intersection
(:mod:`camkit._map_similarity`). The public names are exported by ``camkit.metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from . import _checks, _ops
from ._api import _option_names, explain, methods
from ._base import Explanation, LayerLike
from ._errors import CapabilityError, InputError, TargetError
from ._inputs import as_model_inputs
from ._map_similarity import spearman_correlation, ssim, top_k_count, top_k_intersection
from ._protocol import PARAMETER_RANDOMIZATION, capability
from ._registry import provider_for
from ._scoring import TargetLike, as_target, rows_target
from ._targets import Target

__all__ = ["SanityCheck", "data_randomization", "parameter_randomization"]

Test = Literal["cascading", "independent", "data"]


@dataclass(frozen=True)
class SanityCheck:
    """The maps of randomized models compared with the trained model's, step by step.

    ``test`` is ``"cascading"``, ``"independent"`` or ``"data"``. ``steps`` ``(T,)`` names
    each step: the layer re-initialized at that step (from the output down; a cascading step
    also keeps every layer before it re-initialized, an independent step only that one;
    ``""`` is the model's own parameters), or ``"random labels"`` for the data test.
    ``original`` ``(N, *S)`` are the trained model's maps and ``maps`` ``(T, N, *S)`` each
    step's; ``targets`` ``(N,)`` the class every step explains per sample (``-1`` where the
    target has none). The similarities to the original, ``(T, N)`` each: ``spearman`` and
    ``spearman_abs`` (rank correlation of the values and of their absolute values), ``ssim``
    (on the maps rescaled to ``[0, 1]``) and ``top_k`` (the share of the original's
    ``top_k_pixels`` most salient pixels still among the step's); ``means`` averages each over
    the samples. A method that passes the check has similarities falling towards those of
    unrelated maps as more of the model is randomized.
    """

    test: Test
    steps: tuple[str, ...]
    original: np.ndarray
    maps: np.ndarray
    targets: np.ndarray
    spearman: np.ndarray
    spearman_abs: np.ndarray
    ssim: np.ndarray
    top_k: np.ndarray
    top_k_pixels: int

    @property
    def means(self) -> dict[str, np.ndarray]:
        """Each similarity's mean over the samples, ``(T,)`` per name."""
        return {
            "spearman": self.spearman.mean(axis=1),
            "spearman_abs": self.spearman_abs.mean(axis=1),
            "ssim": self.ssim.mean(axis=1),
            "top_k": self.top_k.mean(axis=1),
        }

    def __str__(self) -> str:
        width = max([len(step) for step in self.steps] + [len("randomized")])
        heading = f"{'randomized':<{width}}  spearman  |spearman|    ssim   top-k"
        rows = [
            f"{step or '(model)':<{width}}  {rho:8.3f}  {rho_abs:10.3f}  {index:6.3f}  {kept:6.3f}"
            for step, rho, rho_abs, index, kept in zip(
                self.steps, *self.means.values(), strict=True
            )
        ]
        title = f"{self.test} randomization, {self.original.shape[0]} samples (means):"
        return "\n".join([title, heading, *rows])


def _one_map_per_sample(explanation: Explanation) -> None:
    if explanation.scores.ndim == 2:
        raise TargetError(
            f"the target gives {explanation.scores.shape[1]} maps per sample; the sanity checks "
            "compare one map per sample: explain one class at a time (target=k, or a class "
            "per sample)"
        )


def _pinned(target: TargetLike, original: Explanation) -> Target:
    """The target with each sample's class fixed to the one the trained model's map explains,
    so that a randomized model, whose top class is another, explains the same class."""
    classes = original.targets
    indices = classes if (classes >= 0).all() else None
    rows = np.arange(len(classes))
    return rows_target(as_target(target), indices, rows, probability=False)


def _with_seed(method: str, options: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The method's options, with ``seed`` for a method that draws noise and was given none:
    every model is then explained with the same draws, and only the model differs."""
    chosen = methods().get(method)
    seeded = chosen is not None and "seed" in _option_names(chosen) and "seed" not in options
    return {**options, "seed": seed} if seeded else dict(options)


def _measured(
    test: Test, steps: Sequence[str], original: Explanation, maps: Sequence[np.ndarray],
    top_k: int | float,
) -> SanityCheck:  # fmt: skip
    k = top_k_count(top_k, math.prod(original.cams.shape[1:]))
    rescaled = _ops.normalize_minmax(original.cams)
    spearman, spearman_abs, index, kept = [], [], [], []
    for step in maps:
        spearman.append(spearman_correlation(original.cams, step))
        spearman_abs.append(spearman_correlation(original.cams, step, absolute=True))
        index.append(ssim(rescaled, _ops.normalize_minmax(step)))
        kept.append(top_k_intersection(original.cams, step, k))
    return SanityCheck(
        test=test,
        steps=tuple(steps),
        original=original.cams,
        maps=np.stack(maps),
        targets=original.targets,
        spearman=np.stack(spearman),
        spearman_abs=np.stack(spearman_abs),
        ssim=np.stack(index),
        top_k=np.stack(kept),
        top_k_pixels=k,
    )


def parameter_randomization(
    model: Any,
    inputs: Any,
    method: str = "gradcam",
    layer: LayerLike | Sequence[LayerLike] | None = None,
    target: TargetLike = None,
    *,
    cascading: bool = True,
    depth: int | None = None,
    seed: int = 0,
    top_k: int | float = 0.1,
    backend: str | None = None,
    image: int | str | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    **method_options: Any,
) -> SanityCheck:
    """The model-parameter randomization test: maps of models whose layers are re-initialized,
    compared with the trained model's.

    The layers that own parameters are taken from the output down. With ``cascading`` step
    ``t`` re-initializes the top ``t + 1`` of them (the paper's cascading randomization), else
    only the ``t``-th (independent randomization). Every step explains ``inputs`` with
    ``method`` at the trained model's ``layer`` and pins each sample's class to the one the
    trained model's map explains (its top-1 class for ``target=None``), so only the parameters
    differ. Each randomized model is a new object built by the backend; ``model`` itself is
    never changed, even when a step fails.

    What re-initialization draws, per backend: torch calls each module's own
    ``reset_parameters()`` (under a seeded, restored RNG); Keras 3 uses each layer's
    initializers (``kernel_initializer``, ...), seeded, and runs the model on the new values
    with ``keras.StatelessScope`` (tf-keras is refused); JAX (Flax NNX and Linen, Equinox,
    function pairs) keeps no initializers, so every parameter gets seeded normal draws at the
    original's root mean square. A layer without an initializer gets those draws too. Only
    learned parameters change: running statistics (batch normalization) stay.

    Args:
        model: as for :func:`camkit.explain`.
        inputs: as for :func:`camkit.explain`.
        method: as for :func:`camkit.explain`.
        layer: as for :func:`camkit.explain`.
        target: as for :func:`camkit.explain`.
        backend: as for :func:`camkit.explain`.
        image: as for :func:`camkit.explain`.
        forward_kwargs: as for :func:`camkit.explain`.
        cascading: re-initialize the layers cumulatively from the top (``True``) or one at a
            time (``False``).
        depth: run only the first ``depth`` steps (the top ``depth`` layers that own
            parameters; a ResNet-50 has about a hundred), or ``None`` for all.
        seed: the seed of the new values (a layer gets the same values at every step), and
            of a method's own noise (the smoothed methods) where ``method_options`` give none.
        top_k: the pixels of the top-k intersection: a count, or a fraction of the pixels.
        **method_options: the method's options, as for :func:`camkit.explain`.

    Returns:
        a :class:`SanityCheck` with one step per layer that owns parameters (the top
        ``depth`` of them).

    Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, section 4.
    """
    if not isinstance(cascading, bool | np.bool_):
        raise InputError(f"cascading={cascading!r} is not valid; use True or False")
    seed = _checks.non_negative_int(seed, "seed")
    depth = None if depth is None else _checks.positive_int(depth, "depth")
    name, provider = provider_for(model, backend)
    try:
        if PARAMETER_RANDOMIZATION not in provider.capabilities:
            raise CapabilityError(
                f"camkit.metrics.parameter_randomization needs the capability "
                f"{str(PARAMETER_RANDOMIZATION)!r}, which the {name!r} backend does not "
                f"provide for {type(model).__qualname__}; randomize a copy yourself and "
                "compare with camkit.metrics.data_randomization(model, copy, inputs)"
            )
        randomizer = capability(provider, PARAMETER_RANDOMIZATION)
        owners = list(randomizer.parameter_layers(as_model_inputs(inputs, forward_kwargs, image)))
        if not owners:
            raise InputError(
                f"{type(model).__qualname__} has no parameters that the forward pass on these "
                "inputs uses: there is nothing to randomize"
            )
        options = _with_seed(method, method_options, seed)
        call = {"backend": name, "image": image, "forward_kwargs": forward_kwargs, **options}
        original = explain(model, inputs, method, layer, target, **call)
        _one_map_per_sample(original)
        top_k = top_k_count(top_k, math.prod(original.cams.shape[1:]))  # checked before the run
        pinned = _pinned(target, original)
        order = owners[::-1][:depth]
        maps = []
        for step, owner in enumerate(order):
            chosen = order[: step + 1] if cascading else [owner]
            randomized = randomizer.randomized(chosen, seed)
            # the trained model's layers, or none for a method that takes none (guided backprop)
            layers = original.layers or None
            maps.append(explain(randomized, inputs, method, layers, pinned, **call).cams)
            del randomized  # one randomized model alive at a time
    finally:
        provider.close()
    return _measured("cascading" if cascading else "independent", order, original, maps, top_k)


def data_randomization(
    model: Any,
    random_label_model: Any,
    inputs: Any,
    method: str = "gradcam",
    layer: LayerLike | Sequence[LayerLike] | None = None,
    target: TargetLike = None,
    *,
    random_label_layer: LayerLike | Sequence[LayerLike] | None = None,
    top_k: int | float = 0.1,
    backend: str | None = None,
    image: int | str | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    **method_options: Any,
) -> SanityCheck:
    """The data randomization test: maps of a model trained on permuted labels, compared with
    those of the model trained on the true labels.

    camkit cannot retrain a model: train ``random_label_model`` yourself, the same
    architecture on the same images with the labels randomly permuted, to (near) zero training
    loss, as Adebayo et al. do. Both models explain ``inputs`` with ``method``, the same class
    per sample (the one ``model``'s map explains), at ``layer`` in ``model`` and at
    ``random_label_layer`` in the other (default: ``layer``'s names, or each model's automatic
    layer for ``layer=None``). A method whose maps are alike for both does not depend on what
    the labels taught the model.

    Args:
        model: the model trained on the true labels.
        random_label_model: the model trained on permuted labels.
        inputs: as for :func:`camkit.explain`.
        method: as for :func:`camkit.explain`.
        layer: as for :func:`camkit.explain`.
        target: as for :func:`camkit.explain`.
        backend: as for :func:`camkit.explain`.
        image: as for :func:`camkit.explain`.
        forward_kwargs: as for :func:`camkit.explain`.
        **method_options: as for :func:`camkit.explain`; a method that draws noise gets
            ``seed=0`` unless given one, so that both models see the same draws.
        top_k: the pixels of the top-k intersection: a count, or a fraction of the pixels.

    Returns:
        a :class:`SanityCheck` with the one step ``"random labels"``.

    Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, section 5.
    """
    options = _with_seed(method, method_options, 0)
    call = {"backend": backend, "image": image, "forward_kwargs": forward_kwargs, **options}
    original = explain(model, inputs, method, layer, target, **call)
    _one_map_per_sample(original)
    if random_label_layer is None and layer is not None:
        random_label_layer = original.layers
    other = explain(
        random_label_model, inputs, method, random_label_layer, _pinned(target, original), **call
    )
    return _measured("data", ["random labels"], original, [other.cams], top_k)
