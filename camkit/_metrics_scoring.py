"""What the metrics share: the maps they take, and a model scoring perturbed copies of its inputs.

The model-based metrics perturb the image with a map and score the perturbed inputs through
the backend's ``forward_scores`` (batched, on the model's device, no capture hooks). Maps are
``(N, *S)`` at the image's resolution (``(N, H, W)`` for images; an
:class:`~camkit.Explanation` or an array); inputs are as the model takes them, with ``image=``
and ``forward_kwargs=`` as for :func:`camkit.explain` (only the image is perturbed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from array_api_compat import array_namespace, device

from . import _checks
from ._base import Explanation
from ._errors import CapabilityError, InputError, TargetError
from ._inputs import ModelInputs, as_model_inputs
from ._namespace import take_rows
from ._output import host_array, unit_maps
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

__all__ = ["Score", "Scoring", "as_maps", "not_finite", "saliency_ranks"]

Array = Any
#: How a perturbed input is scored: a class target by its softmax probability, or as it is.
Score = Literal["probability", "target"]


def not_finite(values: np.ndarray) -> list[int]:
    """The samples (first axis) of ``values`` holding NaN or inf."""
    return np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1)).tolist()


def as_maps(cams: Explanation | Any, argument: str = "cams") -> np.ndarray:
    """``cams`` (an Explanation with one map per sample, or an array) as float32 maps
    ``(N, *S)``, checked: one to three spatial axes, real, finite."""
    if isinstance(cams, Explanation) and cams.scores.ndim == 2:
        raise InputError(
            f"{argument} is an explanation with {cams.scores.shape[1]} maps per sample; the "
            f"metrics take one per sample: pass {argument}.cams[:, k] (with "
            "target=explanation.targets[:, k] for a class target)"
        )
    maps = host_array(cams.cams if isinstance(cams, Explanation) else cams)
    if not 2 <= maps.ndim <= 4 or maps.size == 0:
        raise InputError(
            f"{argument} has shape {maps.shape}; expected maps (N, H, W) (or (N, L), "
            "(N, D, H, W)) or a camkit.Explanation"
        )
    if not np.issubdtype(maps.dtype, np.number) or np.issubdtype(maps.dtype, np.complexfloating):
        raise InputError(f"{argument} has dtype {maps.dtype}; expected real-valued maps")
    bad = not_finite(maps)
    if bad:
        raise InputError(
            f"{argument} hold NaN or inf for samples {bad}; drop those samples (an explanation "
            "made with nonfinite='nan' marks them with NaN maps)"
        )
    return unit_maps(maps)


def saliency_ranks(maps: np.ndarray, *, most_first: bool = True) -> np.ndarray:
    """``(N, *S) -> (N, n)`` int64: ``rank[i, p]``, the place of pixel ``p`` (row-major) of
    map ``i`` when its ``n`` pixels are sorted by saliency, most salient first (least salient
    first if not ``most_first``), ties in row-major order."""
    flat = maps.reshape(maps.shape[0], -1)
    order = np.argsort(-flat if most_first else flat, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(flat.shape[1])[None, :], axis=1)
    return rank


@dataclass(frozen=True)
class Scoring:
    """A model's provider, its channels-first inputs and the target pinned per sample."""

    provider: ActivationGradientProvider
    forward: ForwardScores
    model_inputs: ModelInputs
    inputs: Array  # the image, channels-first (N, C, *S), on the model's device
    target: Target
    indices: np.ndarray | None
    probability: bool

    @classmethod
    def of(
        cls, model: Any, inputs: Any, target: TargetLike, backend: str | None, score: Score,
        image: int | str | None, forward_kwargs: Mapping[str, Any] | None,
    ) -> Scoring:  # fmt: skip
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
        bad = not_finite(provider.to_numpy(scored.scores))
        if bad:
            raise InputError(
                f"NaN or inf: the scores of samples {bad} are not finite, so their inputs (or "
                "the model's weights) hold NaN or inf; check np.isfinite(inputs[i]).all()"
            )
        indices = None if scored.indices is None else provider.to_numpy(scored.indices)
        return cls(provider, forward, model_inputs, x, chosen, indices, score == "probability")

    @property
    def count(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def targets(self) -> np.ndarray:
        """``(N,)`` int64: the class each score is of (``-1`` where the target has none)."""
        chosen = np.full(self.count, -1) if self.indices is None else self.indices
        return np.asarray(chosen, dtype=np.int64)

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

    def score_copies(
        self, copies: int, images: Callable[[np.ndarray, np.ndarray], Array], *,
        batch_size: int, precision: Precision, progress: bool | None, label: str,
    ) -> np.ndarray:  # fmt: skip
        """``(N, copies)`` float32: the scores of ``copies`` perturbed copies of each sample.

        ``images(rows, copies)`` gives the channels-first images of copy ``copies[b]`` of
        sample ``rows[b]``; ``batch_size`` copies go through each forward pass, sample by
        sample, and ``label`` names the run on the progress counter.
        """
        total = self.count * copies
        meter = Progress(label, total, progress)
        chunks = []
        try:
            for start in range(0, total, batch_size):
                points = np.arange(start, min(start + batch_size, total))
                rows = points // copies
                chunks.append(self.scores(images(rows, points % copies), rows, precision))
                meter.advance(len(points))
        finally:
            meter.close()
        xp = array_namespace(self.inputs)
        return self.host(xp.concat(chunks)).reshape(self.count, copies)

    def take(self, array: Array, rows: np.ndarray) -> Array:
        """The rows ``rows`` of a device array (the inputs, or one laid out like them)."""
        return take_rows(array, rows)

    def on_device(self, array: np.ndarray) -> Array:
        xp = array_namespace(self.inputs)
        return xp.asarray(array, dtype=self.inputs.dtype, device=device(self.inputs))

    def host(self, array: Array) -> np.ndarray:
        return np.asarray(self.provider.to_numpy(array), dtype=np.float32)
