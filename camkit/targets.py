"""Framework-neutral targets for ``camkit.explain(..., target=...)``.

An int, a per-sample sequence of ints and ``None`` become :class:`ClassTarget`; a callable
becomes :class:`CallableTarget`. Subclass :class:`Target` for a new kind of score.
"""

from ._targets import (
    CallableTarget,
    ClassTarget,
    RegressionTarget,
    ScoredTarget,
    SegmentationTarget,
    SoftmaxTarget,
    Target,
)

__all__ = [
    "CallableTarget",
    "ClassTarget",
    "RegressionTarget",
    "ScoredTarget",
    "SegmentationTarget",
    "SoftmaxTarget",
    "Target",
]
