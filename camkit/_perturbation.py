"""The perturbation family: channel weights measured by forward passes, not gradients.

Shapes: activations ``A`` ``(N, C, *s)``; the image ``X`` ``(N, C_in, *S)`` channels-first (the
provider's ``core_inputs``); maps ``(N, *s)``; ``*S`` one, two or three spatial axes. ``s(.)``
is the target's score of a forward pass.

The core owns the loop. For Score-CAM and its variants it builds each channel's mask
``H_k = minmax(upsample(A_k))`` chunk by chunk, ``batch_size`` masks at a time (memory never holds
all channels' masks), multiplies them into the image and hands the batch, with the model's other
inputs taken along for each row's sample, to the provider's ``forward_scores``. For Ablation-CAM
it builds ``batch_size`` copies of the layer's output, each with one channel zeroed (along the
layer's own channel axis), and hands them to ``forward_from_layer``. No capture hooks are
active during these passes. A target with ``K`` scores per sample is scored whole on every
pass, so its ``K`` maps cost the passes of one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, get_args

import numpy as np
from array_api_compat import array_namespace, device

from . import _checks, _noise, _ops
from ._base import CamMethod
from ._errors import CamkitError, CapabilityError
from ._gradient import _nonzero_divide
from ._inputs import ModelInputs
from ._layout import LayoutLike
from ._namespace import take_rows
from ._progress import Progress
from ._protocol import (
    FORWARD_FROM_LAYER,
    FORWARD_SCORES,
    Batch,
    Capture,
    Precision,
    capability,
)
from ._scoring import rows_target
from ._targets import Target

__all__ = ["ISCAM", "SSCAM", "AblationCAM", "FasterScoreCAM", "ScoreCAM"]

Array = Any
Weighting = Literal["class-softmax", "channel-softmax"]
Masks = Literal["paper", "torchcam", "pytorch-grad-cam"]


def _sample_indices(capture: Capture, batch: Batch) -> Array | None:
    """The indices the capture's target chose, per real sample, where they are (on the model's
    device): ``(N,)``, or ``(N, K)`` for ``K`` scores per sample."""
    if capture.indices is None or batch.columns is None:
        return capture.indices
    return array_namespace(capture.indices).reshape(capture.indices, (-1, batch.columns))


def _real_samples(virtual: Array, batch: Batch) -> Array:
    """The ``N`` real samples of ``N * K`` virtual ones (every ``K``-th row; see ``Batch``)."""
    return virtual if batch.columns is None else virtual[:: batch.columns]


def _per_score(weights: Array, batch: Batch) -> Array:
    """Channel weights ``(N, C, K)`` of ``K`` scores per sample as ``(N * K, C)`` weights of the
    virtual samples; ``(N, C, 1)`` as ``(N, C)``."""
    xp = array_namespace(weights)
    if batch.columns is None:
        return weights[..., 0]
    return xp.reshape(xp.permute_dims(weights, (0, 2, 1)), (-1, weights.shape[1]))


def _filled(batch: Batch) -> tuple[Array, ModelInputs, Target]:
    """The image, inputs and target that the core fills in for methods with ``needs_inputs``."""
    if batch.image is None or batch.inputs is None or batch.target is None:
        raise CamkitError("this method needs the batch's inputs and target; call the method")
    return batch.image, batch.inputs, batch.target


def _run_options(
    batch_size: object, precision: object, progress: object
) -> tuple[int, Precision, bool | None]:
    """The options every method that runs forward passes shares, checked."""
    return (
        _checks.positive_int(batch_size, "batch_size"),
        _checks.one_of(precision, "precision", get_args(Precision)),  # type: ignore[arg-type]
        _checks.optional_flag(progress, "progress"),
    )


def _sample_rows(inputs: Array, rows: np.ndarray) -> Array:
    """``inputs[rows]``; a single-sample batch is broadcast instead of copied."""
    if inputs.shape[0] == 1:
        return inputs
    return take_rows(inputs, rows)


class ScoreCAM(CamMethod):
    """Score-CAM: channels weighted by the score of the input masked by their own activation.

    ``H_k = minmax(upsample(A[n, k]))`` ``(H, W)``, ``w[n, k] = s(X[n] * H_k)``,
    ``M[n] = ReLU(sum_k w[n, k] * A[n, k])``.

    ``weighting`` selects a published reading of ``s``:

    - ``"class-softmax"`` (default, the paper's Algorithm 1 and its released code): ``s`` is the
      softmax probability of the target class for the masked input. Targets without classes
      (regression, segmentation, callables) use their own score.
    - ``"channel-softmax"`` (torchcam): ``w[n] = softmax_k(y_c(X * H_k) - y_c(X))``, a softmax
      over channels of the increase of the target's score (its logit for a class target); the
      subtracted baseline is the same for every channel, so it cancels in the softmax.

    ``masks`` selects how ``H_k`` is made from ``A[n, k]``:

    - ``"paper"`` (default): upsampled (half-pixel centres), then min-max normalized.
    - ``"torchcam"``: min-max normalized at the layer's size, then upsampled, so a mask whose
      extreme lies between the upsampled pixels spans less than ``[0, 1]``.
    - ``"pytorch-grad-cam"``: upsampled with corner-aligned pixels
      (``UpsamplingBilinear2d``), then normalized.

    (tf-keras-vis upsamples with corner-aligned ``scipy.ndimage.zoom``.)

    Args:
        batch_size: masked inputs per forward pass; memory grows with it, never with ``C``.
        precision: ``"float32"``, or ``"bfloat16"``/``"float16"`` for the masked passes
            where the backend supports it (faster on hardware with fast half precision).
        progress: show a progress line (``None``: only for long runs on a terminal).

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks", CVPR Workshops 2020, eqs. 3-5 and Algorithm 1.
    """

    name = "scorecam"
    paper = "Wang et al., CVPR Workshops 2020, arXiv:1910.01279"
    needs_gradients = False
    requires = frozenset({FORWARD_SCORES})
    fusable = False
    needs_inputs = True
    weightings: tuple[str, ...] = get_args(Weighting)
    #: Forward passes per mask (the variants average several).
    repeats: int = 1
    #: Seed of the variants that draw noise.
    seed: int | None = None

    def __init__(
        self,
        *args: Any,
        batch_size: int = 32,
        weighting: Weighting = "class-softmax",
        masks: Masks = "paper",
        precision: Precision = "float32",
        progress: bool | None = None,
        **kwargs: Any,
    ) -> None:
        self.weighting = _checks.one_of(weighting, "weighting", self.weightings)
        self.masks = _checks.one_of(masks, "masks", get_args(Masks))
        self.batch_size, self.precision, self.progress = _run_options(
            batch_size, precision, progress
        )
        super().__init__(*args, **kwargs)

    def layer_map(
        self, activations: Array, gradients: None, capture: Capture, batch: Batch
    ) -> Array:
        xp = array_namespace(activations)
        selected = self._selected_channels(_real_samples(activations, batch))
        scores = self._mask_scores(selected, capture, batch)  # (N, C, K)
        if self.weighting == "channel-softmax":
            shifted = xp.exp(scores - xp.max(scores, axis=1, keepdims=True))
            scores = shifted / xp.sum(shifted, axis=1, keepdims=True)
        if batch.columns is not None:
            selected = xp.repeat(selected, batch.columns, axis=0)
        return self._weighted_channel_sum(_per_score(scores, batch), selected)

    def _selected_channels(self, activations: Array) -> Array:
        """The channels that get a weight, ``(N, K, h, w)``: all of them here."""
        return activations

    def _masks(self, activations: Array, size: tuple[int, ...]) -> Array:
        """``(B, *s) -> (B, *S)``: each channel's mask ``H_k``, as ``masks`` reads it."""
        if self.masks == "torchcam":
            return _ops.resize_linear(_ops.normalize_minmax(activations), size)
        corners = self.masks == "pytorch-grad-cam"
        return _ops.normalize_minmax(_ops.resize_linear(activations, size, align_corners=corners))

    def _variants(self, masks: Array, channels: np.ndarray, seed: int) -> Iterator[Array]:
        """The masks each chunk is scored with, ``repeats`` of them; their scores are averaged.
        ``channels`` is each mask's channel index, ``seed`` the run's seed."""
        yield masks

    def _mask_scores(self, selected: Array, capture: Capture, batch: Batch) -> Array:
        """``(N, C, h, w) -> (N, C, K)``: the mean score of ``X[n] * variant(H_c)``, for each
        of the target's ``K`` scores (``K = 1`` for one)."""
        xp = array_namespace(selected)
        provider = capability(self.provider, FORWARD_SCORES)
        count, channels = selected.shape[0], selected.shape[1]
        flat = xp.reshape(selected, (count * channels, *selected.shape[2:]))
        image, model_inputs, chosen = _filled(batch)
        indices = _sample_indices(capture, batch)
        probability = self.weighting == "class-softmax"
        seed = _noise.run_seed(self.seed)
        progress = Progress(self.name, count * channels * self.repeats, self.progress)
        chunks = []
        try:
            for start in range(0, count * channels, self.batch_size):
                stop = min(start + self.batch_size, count * channels)
                rows = np.arange(start, stop) // channels
                masks = self._masks(flat[start:stop], batch.size)
                images = _sample_rows(image, rows)
                target = rows_target(chosen, indices, rows, probability=probability)
                total: Array = None
                for variant in self._variants(masks, np.arange(start, stop) % channels, seed):
                    masked = provider.native_image(images * variant[:, None, ...])
                    scored = provider.forward_scores(
                        model_inputs.rows(rows, masked), target, precision=self.precision
                    )
                    total = scored.scores if total is None else total + scored.scores
                    progress.advance(stop - start)
                chunks.append(total / self.repeats)
        finally:
            progress.close()
        return xp.reshape(xp.concat(chunks), (count, channels, -1))


class FasterScoreCAM(ScoreCAM):
    """Faster Score-CAM: Score-CAM on the ``channels`` channels of largest spatial variance.

    ``K_n`` = the ``channels`` indices ``k`` with the largest ``Var_ij A[n, k, i, j]``;
    ``M[n] = ReLU(sum_{k in K_n} s(X[n] * H_k) * A[n, k])``. Channels with flat activations
    make flat masks that barely change the score, so skipping them costs little agreement for a
    ``C / channels`` speed-up.

    Tabayashi, "Faster Score-CAM" (github.com/tabayashi0117/Score-CAM, 2020; also
    tf-keras-vis' ``max_N``), after Wang et al., arXiv:1910.01279.
    """

    name = "fasterscorecam"
    paper = "Tabayashi (2020), github.com/tabayashi0117/Score-CAM, no paper"

    def __init__(self, *args: Any, channels: int = 10, **kwargs: Any) -> None:
        self.channels = _checks.positive_int(channels, "channels")
        super().__init__(*args, **kwargs)

    def _selected_channels(self, activations: Array) -> Array:
        xp = array_namespace(activations)
        if self.channels >= activations.shape[1]:
            return activations
        spread = self.provider.to_numpy(xp.var(activations, axis=_ops.spatial_axes(activations)))
        # stable: among equal variances the lower channel index wins, as in tf.math.top_k
        order = np.argsort(-spread, axis=1, kind="stable")[:, : self.channels]
        where = device(activations)
        return xp.stack(
            [
                xp.take(activations[n], xp.asarray(order[n], device=where), axis=0)
                for n in range(activations.shape[0])
            ]
        )


class SSCAM(ScoreCAM):
    """SS-CAM: Score-CAM with each mask's score averaged over noisy copies of the mask.

    ``w[n, k] = (1 / S) sum_{i=1..S} s(X[n] * (H_k + e_{k,i}))`` with ``e_{k,i} ~ N(0,
    noise^2)`` drawn per pixel, then as in Score-CAM. ``samples`` and ``noise`` default to
    torchcam's values (35, 2.0); ``seed`` makes the noise reproducible. Draw ``e_{k,i}`` depends
    on the channel and the repeat only, so ``batch_size`` and the batch an image comes in do
    not change its map.

    Wang et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization",
    arXiv:2006.14255 (2020).
    """

    name = "sscam"
    paper = "Wang et al., 2020, arXiv:2006.14255"

    def __init__(
        self, *args: Any, samples: int = 35, noise: float = 2.0, seed: int | None = None,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        self.repeats = _checks.positive_int(samples, "samples")
        self.noise = _checks.number(noise, "noise", minimum=0)
        self.seed = _checks.seed(seed)
        super().__init__(*args, **kwargs)

    def _variants(self, masks: Array, channels: np.ndarray, seed: int) -> Iterator[Array]:
        xp = array_namespace(masks)
        shape = tuple(masks.shape[1:])
        for repeat in range(self.repeats):
            noise = np.stack([_noise.normal(seed, (int(k), repeat), shape) for k in channels])
            scaled = noise * np.float32(self.noise)
            yield masks + xp.asarray(scaled, dtype=masks.dtype, device=device(masks))


class ISCAM(ScoreCAM):
    """IS-CAM: Score-CAM with each mask's score integrated along a path of scaled masks.

    ``w[n, k] = (1 / S) sum_{i=1..S} s(X[n] * c_i H_k)``, ``c_i = sum_{j=1..i} j / S``, the
    cumulative masks of the paper's algorithm as torchcam implements them (``c_S = (S+1) / 2``).

    Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based explanations",
    arXiv:2010.03023 (2020).
    """

    name = "iscam"
    paper = "Naidu et al., 2020, arXiv:2010.03023"

    def __init__(self, *args: Any, samples: int = 10, **kwargs: Any) -> None:
        self.repeats = _checks.positive_int(samples, "samples")
        super().__init__(*args, **kwargs)

    def _variants(self, masks: Array, channels: np.ndarray, seed: int) -> Iterator[Array]:
        coefficient = 0.0
        for step in range(1, self.repeats + 1):
            coefficient += step / self.repeats
            yield masks * coefficient


class AblationCAM(CamMethod):
    """Ablation-CAM: channels weighted by the drop of the score when they are zeroed.

    With ``y = s(X[n])`` and ``y_k`` the score when ``A[n, k]`` is set to 0 at the layer (the
    network run from the layer onward), ``w[n, k] = (y - y_k) / y`` (0 where ``y = 0``),
    ``M[n] = ReLU(sum_k w[n, k] * A[n, k])``. Channels are zeroed along the layer's own channel
    axis (the last for channels-last and token layers, across all positions).

    Needs the backend's ``forward_from_layer`` capability.

    Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional Network via
    Gradient-free Localization", WACV 2020, eqs. 2-3.
    """

    name = "ablationcam"
    paper = "Desai & Ramaswamy, WACV 2020, doi:10.1109/WACV45572.2020.9093360"
    needs_gradients = False
    requires = frozenset({FORWARD_SCORES, FORWARD_FROM_LAYER})
    fusable = False
    needs_inputs = True

    def __init__(
        self,
        *args: Any,
        batch_size: int = 32,
        precision: Precision = "float32",
        progress: bool | None = None,
        **kwargs: Any,
    ) -> None:
        self.batch_size, self.precision, self.progress = _run_options(
            batch_size, precision, progress
        )
        super().__init__(*args, **kwargs)

    def _layer_maps(self, capture: Capture, batch: Batch) -> list[Array]:
        layers = self._layers or ()
        return [
            self._ablation_map(layer, layout, activations, capture, batch)
            for layer, layout, activations in zip(
                layers, batch.layouts, capture.activations, strict=True
            )
        ]

    def layer_map(
        self, activations: Array, gradients: None, capture: Capture, batch: Batch
    ) -> Array:
        raise NotImplementedError("Ablation-CAM maps need the layer's name; see _layer_maps")

    def _ablation_map(
        self, layer: str, layout: LayoutLike, activations: Array, capture: Capture, batch: Batch
    ) -> Array:
        xp = array_namespace(activations)
        provider = capability(self.provider, FORWARD_FROM_LAYER)
        grid = self._as_grid(activations, layer, layout, batch)  # a layer without a map: now
        if callable(layout):
            raise CapabilityError(
                "Ablation-CAM zeroes each channel of the layer's output as the model sees it, so "
                "it needs the channel axis: pass layout='channels_first', 'channels_last' or "
                "'tokens' instead of a function"
            )
        activations = _real_samples(activations, batch)
        axis = 1 if layout == "channels_first" else activations.ndim - 1
        count, channels = activations.shape[0], activations.shape[axis]
        keep_all = 1 - xp.eye(channels, dtype=activations.dtype, device=device(activations))
        shape = [1] * activations.ndim
        indices = _sample_indices(capture, batch)
        _, model_inputs, chosen = _filled(batch)
        progress = Progress(self.name, count * channels, self.progress)
        per_sample = []
        try:
            for n in range(count):
                chunks = []
                sample = model_inputs.rows(np.array([n]), model_inputs.image[n : n + 1])
                for start in range(0, channels, self.batch_size):
                    keep = keep_all[start : start + self.batch_size]
                    rows = np.full((keep.shape[0],), n)
                    target = rows_target(chosen, indices, rows, probability=False)
                    shape[0], shape[axis] = keep.shape[0], channels
                    keep = xp.reshape(keep, tuple(shape))  # (B, ..., C at the channel axis, ...)
                    scored = provider.forward_from_layer(
                        sample, layer, activations[n : n + 1] * keep, target,
                        precision=self.precision,
                    )  # fmt: skip
                    chunks.append(scored.scores)
                    progress.advance(keep.shape[0])
                per_sample.append(xp.concat(chunks))
        finally:
            progress.close()
        ablated = xp.reshape(xp.stack(per_sample), (count, channels, -1))  # (N, C, K)
        original = xp.reshape(xp.astype(capture.scores, ablated.dtype), (count, 1, -1))
        weights = _nonzero_divide(original - ablated, original)
        return self._weighted_channel_sum(_per_score(weights, batch), grid)
