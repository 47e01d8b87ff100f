"""Faithfulness and localization metrics of saliency maps, on every backend.

The model-based metrics perturb the image with a map and score the perturbed inputs through
the backend's ``forward_scores`` (batched, on the model's device, no capture hooks); the
localization metrics compare maps with boxes or masks on the host. Maps are ``(N, *S)`` at the
image's resolution (``(N, H, W)`` for images; an :class:`~camkit.Explanation` or an array);
inputs are as the model takes them, with ``image=`` and ``forward_kwargs=`` as for
:func:`camkit.explain` (only the image is perturbed). Every result holds per-sample values and
their mean. The public names are exported by ``camkit.metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from array_api_compat import array_namespace, device

from . import _checks, _ops
from ._base import Explanation
from ._errors import CapabilityError, InputError, TargetError
from ._inputs import ModelInputs, as_model_inputs
from ._progress import Progress
from ._protocol import (
    FORWARD_SCORES,
    ActivationGradientProvider,
    ForwardScores,
    Precision,
    capability,
)
from ._registry import provider_for
from ._scoring import TargetLike, as_target, rows_target
from ._targets import Target

Array = Any
Baseline = float | Literal["blur"] | Any
Score = Literal["probability", "target"]
Regions = Any  # per sample: a mask (H, W), a box (x0, y0, x1, y1) or a sequence of boxes


def _not_finite(values: np.ndarray) -> list[int]:
    """The samples (first axis) of ``values`` holding NaN or inf."""
    return np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1)).tolist()


def _maps(cams: Explanation | Any, argument: str = "cams") -> np.ndarray:
    if isinstance(cams, Explanation) and cams.scores.ndim == 2:
        raise InputError(
            f"{argument} is an explanation with {cams.scores.shape[1]} maps per sample; the "
            f"metrics take one per sample: pass {argument}.cams[:, k] (with "
            "target=explanation.targets[:, k] for a class target)"
        )
    maps = cams.cams if isinstance(cams, Explanation) else np.asarray(cams)
    if not 2 <= maps.ndim <= 4 or maps.size == 0:
        raise InputError(
            f"{argument} has shape {maps.shape}; expected maps (N, H, W) (or (N, L), "
            "(N, D, H, W)) or a camkit.Explanation"
        )
    if not np.issubdtype(maps.dtype, np.number) or np.issubdtype(maps.dtype, np.complexfloating):
        raise InputError(f"{argument} has dtype {maps.dtype}; expected real-valued maps")
    bad = _not_finite(maps)
    if bad:
        raise InputError(
            f"{argument} hold NaN or inf for samples {bad}; drop those samples (an explanation "
            "made with nonfinite='nan' marks them with NaN maps)"
        )
    return maps.astype(np.float32, copy=False)


@dataclass(frozen=True)
class _Scoring:
    """A model's provider, its channels-first inputs and the target pinned per sample."""

    provider: ActivationGradientProvider
    forward: ForwardScores
    model_inputs: ModelInputs
    inputs: Array  # the image, channels-first
    target: Target
    indices: np.ndarray | None
    probability: bool

    @classmethod
    def of(
        cls, model: Any, inputs: Any, target: TargetLike, backend: str | None, score: Score,
        image: int | str | None, forward_kwargs: Mapping[str, Any] | None,
    ) -> _Scoring:  # fmt: skip
        _checks.one_of(score, "score", ("probability", "target"))
        chosen = as_target(target)
        model_inputs = as_model_inputs(inputs, forward_kwargs, image)
        name, provider = provider_for(model, backend)
        if FORWARD_SCORES not in provider.capabilities:
            raise CapabilityError(
                f"camkit.metrics needs the capability {str(FORWARD_SCORES)!r}, which the "
                f"{name!r} backend does not provide for {type(model).__qualname__}"
            )
        forward = capability(provider, FORWARD_SCORES)
        x = forward.core_inputs(model_inputs)
        scored = forward.forward_scores(model_inputs, chosen, precision="float32")
        if scored.scores.ndim != 1:
            raise TargetError(
                f"camkit.metrics scores one map per sample, but the target {chosen!r} gives "
                f"{scored.scores.shape[1]} scores per sample; measure each: pass "
                "explanation.cams[:, k] with target=explanation.targets[:, k] (a class "
                "target), for k in range(K)"
            )
        bad = _not_finite(provider.to_numpy(scored.scores))
        if bad:
            raise InputError(
                f"NaN or inf: the scores of samples {bad} are not finite, so their inputs (or "
                "the model's weights) hold NaN or inf; check np.isfinite(inputs[i]).all()"
            )
        indices = None if scored.indices is None else provider.to_numpy(scored.indices)
        return cls(provider, forward, model_inputs, x, chosen, indices, score == "probability")

    def check(self, maps: np.ndarray) -> None:
        expected = tuple(int(s) for s in (self.inputs.shape[0], *self.inputs.shape[2:]))
        if maps.shape != expected:
            raise InputError(
                f"cams have shape {maps.shape} but the inputs need {expected} (N, *spatial); "
                "explain with size='input', or pass maps at the inputs' resolution"
            )

    def scores(self, images: Array, rows: np.ndarray, precision: Precision) -> Array:
        """The pinned target's scores of ``images`` (channels-first), whose row ``b`` derives
        from sample ``rows[b]`` (the model's other inputs are taken along)."""
        target = rows_target(self.target, self.indices, rows, probability=self.probability)
        inputs = self.model_inputs.rows(rows, self.forward.native_image(images))
        return self.forward.forward_scores(inputs, target, precision=precision).scores

    def on_device(self, array: np.ndarray) -> Array:
        xp = array_namespace(self.inputs)
        return xp.asarray(array, dtype=self.inputs.dtype, device=device(self.inputs))

    def host(self, array: Array) -> np.ndarray:
        return np.asarray(self.provider.to_numpy(array), dtype=np.float32)


@dataclass(frozen=True)
class Curves:
    """Deletion or insertion curves.

    ``fractions`` ``(S + 1,)`` the fraction of pixels changed at each step; ``scores``
    ``(N, S + 1)`` the target's score there; ``auc`` ``(N,)`` the area under each curve
    (trapezoidal rule over ``fractions``); ``targets`` ``(N,)`` the class each score is of
    (``-1`` where the target has none).
    """

    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray
    targets: np.ndarray

    @property
    def mean(self) -> float:
        """The mean AUC over the samples."""
        return float(np.mean(self.auc))


def _broadcasts(given: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(given, shape) == shape
    except ValueError:
        return False


def _baseline(scoring: _Scoring, baseline: Baseline, blur_sigma: float) -> Array:
    x = scoring.inputs
    wanted = "'blur', a number or an array shaped like the channels-first inputs"
    if isinstance(baseline, str):
        _checks.one_of(baseline, "baseline", ("blur",))
        return _ops.blur_gaussian(x, blur_sigma)
    if isinstance(baseline, int | float) and not isinstance(baseline, bool):
        return x * 0 + _checks.number(baseline, "baseline")
    try:
        values = np.asarray(baseline, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"baseline={baseline!r} is not valid; use {wanted}") from None
    shape = tuple(int(s) for s in x.shape)
    if not _broadcasts(values.shape, shape):
        raise InputError(
            f"baseline has shape {values.shape}, which does not broadcast to the inputs' "
            f"channels-first shape {shape}; use {wanted}"
        )
    return x * 0 + scoring.on_device(values)


def _curves(
    model: Any, inputs: Any, cams: Explanation | Any, target: TargetLike, *, insert: bool,
    steps: int, baseline: Baseline, blur_sigma: float, score: Score, batch_size: int,
    backend: str | None, precision: Precision, progress: bool | None,
    image: int | str | None, forward_kwargs: Mapping[str, Any] | None,
) -> Curves:  # fmt: skip
    _checks.positive_int(steps, "steps")
    _checks.positive_int(batch_size, "batch_size")
    _checks.one_of(precision, "precision", get_args(Precision))
    _checks.number(blur_sigma, "blur_sigma", minimum=0)
    maps = _maps(cams)
    scoring = _Scoring.of(model, inputs, target, backend, score, image, forward_kwargs)
    scoring.check(maps)
    x = scoring.inputs
    xp = array_namespace(x)
    count, pixels = maps.shape[0], math.prod(maps.shape[1:])
    spread = (1,) * (maps.ndim - 1)  # broadcasts a per-row value over the spatial axes
    # rank[n, p]: position of pixel p when sorted by saliency, most salient first (stable)
    order = np.argsort(-maps.reshape(count, pixels), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(pixels)[None, :], axis=1)
    ranks = scoring.on_device(rank.reshape(maps.shape).astype(np.float32))
    changed_counts = (np.arange(steps + 1) * pixels) // steps
    removed = _baseline(scoring, baseline, blur_sigma)
    start_images, end_images = (removed, x) if insert else (x, removed)
    points = count * (steps + 1)
    meter = Progress("insertion" if insert else "deletion", points, progress)
    chunks = []
    try:
        for start in range(0, points, batch_size):
            pairs = np.arange(start, min(start + batch_size, points))
            rows, step_ids = pairs // (steps + 1), pairs % (steps + 1)
            where = xp.asarray(rows, device=device(x))
            limits = scoring.on_device(changed_counts[step_ids].astype(np.float32))
            limits = xp.reshape(limits, (len(pairs), *spread))
            changed = xp.astype(xp.take(ranks, where, axis=0) < limits, x.dtype)
            first, last = xp.take(start_images, where, axis=0), xp.take(end_images, where, axis=0)
            images = first + changed[:, None, ...] * (last - first)
            chunks.append(scoring.scores(images, rows, precision))
            meter.advance(len(pairs))
    finally:
        meter.close()
    curve = scoring.host(xp.concat(chunks)).reshape(count, steps + 1)
    auc = (curve.sum(axis=1) - (curve[:, 0] + curve[:, -1]) / 2) / steps
    targets = np.full(count, -1) if scoring.indices is None else scoring.indices
    return Curves(
        fractions=changed_counts / pixels, scores=curve, auc=auc, targets=targets.astype(np.int64)
    )


def deletion(
    model: Any,
    inputs: Any,
    cams: Explanation | Any,
    target: TargetLike = None,
    *,
    steps: int = 50,
    baseline: Baseline = 0.0,
    blur_sigma: float = 5.0,
    score: Score = "probability",
    batch_size: int = 32,
    backend: str | None = None,
    precision: Precision = "float32",
    progress: bool | None = None,
    image: int | str | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Curves:
    """The deletion curve: the score as the most salient pixels are removed first.

    At step ``i = 0..steps`` the ``floor(i * HW / steps)`` pixels of highest saliency are
    replaced by the baseline (all channels), ``X_i = X + m_i * (B - X)``; the curve is the
    target's score of ``X_i`` and its area (trapezoidal, over the fraction removed) is lower for
    a more faithful map. ``score="probability"`` scores a class target by its softmax
    probability (the paper's choice), ``"target"`` by the target itself.

    Args:
        model, inputs: as for :func:`camkit.explain`.
        cams: the maps ``(N, H, W)`` at the inputs' resolution, or an Explanation.
        target: what to score; a top-1 target is pinned to each sample's class on the
            unperturbed input.
        baseline: what removed pixels become: a number, ``"blur"`` (the input blurred with a
            Gaussian of ``blur_sigma`` pixels) or an array shaped like the channels-first inputs.
        batch_size: perturbed inputs per forward pass.
        image, forward_kwargs: for models with several inputs, as for
            :func:`camkit.explain`; only the image is perturbed.

    Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models",
    BMVC 2018, section 4.1.
    """
    return _curves(
        model, inputs, cams, target, insert=False, steps=steps, baseline=baseline,
        blur_sigma=blur_sigma, score=score, batch_size=batch_size, backend=backend,
        precision=precision, progress=progress, image=image, forward_kwargs=forward_kwargs,
    )  # fmt: skip


def insertion(
    model: Any,
    inputs: Any,
    cams: Explanation | Any,
    target: TargetLike = None,
    *,
    steps: int = 50,
    baseline: Baseline = "blur",
    blur_sigma: float = 5.0,
    score: Score = "probability",
    batch_size: int = 32,
    backend: str | None = None,
    precision: Precision = "float32",
    progress: bool | None = None,
    image: int | str | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Curves:
    """The insertion curve: the score as the most salient pixels are put back first.

    Starting from the baseline (by default the input blurred with a Gaussian of ``blur_sigma``
    pixels), step ``i`` restores the ``floor(i * HW / steps)`` pixels of highest saliency,
    ``X_i = B + m_i * (X - B)``; a higher area means a more faithful map. Arguments as for
    :func:`deletion`.

    Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models",
    BMVC 2018, section 4.1.
    """
    return _curves(
        model, inputs, cams, target, insert=True, steps=steps, baseline=baseline,
        blur_sigma=blur_sigma, score=score, batch_size=batch_size, backend=backend,
        precision=precision, progress=progress, image=image, forward_kwargs=forward_kwargs,
    )  # fmt: skip


@dataclass(frozen=True)
class ConfidenceChange:
    """Average drop and increase in confidence.

    ``original`` ``(N,)`` the score ``Y`` of each input; ``explained`` ``(N,)`` the score ``O``
    of the input multiplied by its map; ``drop`` ``(N,)`` ``max(0, Y - O) / Y``; ``increased``
    ``(N,)`` whether ``O > Y``. ``average_drop`` and ``increase_in_confidence`` are their means
    in percent (lower and higher is better).
    """

    original: np.ndarray
    explained: np.ndarray
    drop: np.ndarray
    increased: np.ndarray

    @property
    def average_drop(self) -> float:
        return float(100 * np.mean(self.drop))

    @property
    def increase_in_confidence(self) -> float:
        return float(100 * np.mean(self.increased))


def confidence_change(
    model: Any,
    inputs: Any,
    cams: Explanation | Any,
    target: TargetLike = None,
    *,
    score: Score = "probability",
    batch_size: int = 32,
    backend: str | None = None,
    precision: Precision = "float32",
    image: int | str | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> ConfidenceChange:
    """Average drop ``(1/N) sum_n max(0, Y_n - O_n) / Y_n`` and increase in confidence
    ``(1/N) sum_n [O_n > Y_n]``, where ``Y_n`` is the score of the input and ``O_n`` that of
    the explanation map ``X_n * M_n`` (maps in ``[0, 1]``, as normalized).

    Chattopadhay et al., "Grad-CAM++", WACV 2018, section 5.1 (eqs. 20-21).
    """
    _checks.positive_int(batch_size, "batch_size")
    _checks.one_of(precision, "precision", get_args(Precision))
    maps = _maps(cams)
    scoring = _Scoring.of(model, inputs, target, backend, score, image, forward_kwargs)
    scoring.check(maps)
    x = scoring.inputs
    xp = array_namespace(x)
    weights = scoring.on_device(maps)[:, None, ...]
    half = max(1, batch_size // 2)  # each pass scores an input and its explanation map
    original, explained = [], []
    for start in range(0, maps.shape[0], half):
        rows = np.arange(start, min(start + half, maps.shape[0]))
        chunk = x[start : start + half]
        both = xp.concat([chunk, chunk * weights[start : start + half]])
        scores = scoring.host(scoring.scores(both, np.concatenate([rows, rows]), precision))
        original.append(scores[: len(rows)])
        explained.append(scores[len(rows) :])
    y, o = np.concatenate(original), np.concatenate(explained)
    drop = np.where(y != 0, np.maximum(y - o, 0) / np.where(y != 0, y, 1), 0.0)
    return ConfidenceChange(original=y, explained=o, drop=drop, increased=o > y)


def _region_masks(regions: Regions, shape: tuple[int, int, int]) -> np.ndarray:
    """Boolean ``(N, H, W)`` masks from masks ``(N, H, W)``, boxes ``(N, 4)``, or one item per
    sample (a mask ``(H, W)``, a box, or a sequence of boxes ``(k, 4)``).

    A box is ``(x0, y0, x1, y1)`` in pixels, ``x1`` and ``y1`` exclusive, with ``x0 < x1`` and
    ``y0 < y1``; a box reaching past the border is clipped to the image, one wholly outside it
    is an error (it could never be hit).
    """
    if len(shape) != 3:
        raise InputError(f"cams have shape {shape}; the pointing games take images' maps (N, H, W)")
    count, height, width = shape
    items = list(np.asarray(regions)) if hasattr(regions, "shape") else list(regions)
    if len(items) != count:
        raise InputError(
            f"regions hold {len(items)} items for {count} maps; give one mask (H, W), box "
            "(x0, y0, x1, y1) or sequence of boxes per map"
        )
    masks = np.zeros(shape, dtype=bool)
    for n, item in enumerate(items):
        array = np.asarray(item)
        if array.shape == (height, width):
            masks[n] = array.astype(bool)
            continue
        boxes = array.dtype != bool and array.size and array.shape[-1:] == (4,) and array.ndim < 3
        if not boxes:
            raise InputError(
                f"regions[{n}] has shape {array.shape}; expected a mask ({height}, {width}) at "
                "the maps' resolution, a box (x0, y0, x1, y1) or a sequence of boxes (k, 4)"
            )
        for box in array.reshape(-1, 4).astype(np.float64):
            x0, y0, x1, y1 = box
            if not (np.isfinite(box).all() and x0 < x1 and y0 < y1):
                raise InputError(
                    f"regions[{n}] has the box {tuple(box.tolist())}; a box is (x0, y0, x1, y1) "
                    "with x0 < x1 and y0 < y1, in pixels"
                )
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                raise InputError(
                    f"regions[{n}] has the box {tuple(box.tolist())}, which lies outside the "
                    f"maps' {width}x{height} pixels; give boxes in the maps' pixel coordinates"
                )
            x0, y0, x1, y1 = np.rint(box).astype(np.int64)
            masks[n, max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)] = True
    return masks


@dataclass(frozen=True)
class PointingGame:
    """``hits`` ``(N,)``: whether each map's maximum falls on its region; ``accuracy`` their
    mean (hits / (hits + misses))."""

    hits: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.hits))


def pointing_game(
    cams: Explanation | Any, regions: Regions, *, tolerance: float = 15.0
) -> PointingGame:
    """The pointing game: a hit when the map's maximum lies within ``tolerance`` pixels of the
    region (a box, several boxes or a mask per sample); the first maximum in row-major order
    when several pixels tie.

    Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016 / IJCV 2018,
    section 5.1 (15-pixel tolerance).
    """
    tolerance = _checks.number(tolerance, "tolerance", minimum=0)
    maps = _maps(cams)
    masks = _region_masks(regions, maps.shape)
    hits = np.zeros(maps.shape[0], dtype=bool)
    for n, (cam, mask) in enumerate(zip(maps, masks, strict=True)):
        peak = np.array(np.unravel_index(np.argmax(cam), cam.shape))
        inside = np.argwhere(mask)
        if len(inside):
            hits[n] = np.min(np.hypot(*(inside - peak).T)) <= tolerance
    return PointingGame(hits=hits)


@dataclass(frozen=True)
class EnergyPointing:
    """``proportions`` ``(N,)``: the share of each map's energy inside its region; ``mean``."""

    proportions: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.mean(self.proportions))


def energy_pointing_game(cams: Explanation | Any, regions: Regions) -> EnergyPointing:
    """The energy-based pointing game: ``sum_{ij in region} M_ij / sum_ij M_ij`` per map (maps
    non-negative, as after ReLU and normalization; an all-zero map scores 0).

    Wang et al., "Score-CAM", CVPR Workshops 2020, section 4.2.
    """
    maps = _maps(cams)
    masks = _region_masks(regions, maps.shape)
    total = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    return EnergyPointing(
        proportions=np.where(total > 0, inside / np.where(total > 0, total, 1), 0)
    )


def quantus_attributions(cams: Explanation | Any, size: Sequence[int] | None = None) -> np.ndarray:
    """Maps as the ``(N, 1, H, W)`` float32 attributions that Quantus' metrics take (``a_batch``).

    ``size`` ``(H, W)`` resizes them bilinearly to the inputs' resolution where they were
    computed at another size; without it they must already be at that resolution.
    """
    maps = _maps(cams)
    if size is not None:
        target = _checks.positive_sizes(size, "size", "the inputs' spatial size, or None")
        maps = _ops.resize_linear(maps, target)
    return np.ascontiguousarray(maps[:, None, ...], dtype=np.float32)
