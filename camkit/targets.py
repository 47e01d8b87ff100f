"""Framework-neutral targets for ``camkit.explain(..., target=...)``.

An int, a per-sample sequence of ints and ``None`` become :class:`ClassTarget`; classes per
sample (a 2-d list or integer array) become :class:`Classes`; a callable becomes
:class:`CallableTarget`. Targets with several scores per sample (:class:`TopK`,
:class:`Classes`, :class:`AllClasses`, :class:`BoxTarget` with ``per_box``,
:class:`SimilarityTarget` with ``per_reference``) give ``K`` maps per sample from one forward
pass. Subclass :class:`Target` for a new kind of score.
"""

from ._boxes import BoxFormat, BoxTarget
from ._multi import AllClasses, Classes, TopK
from ._similarity import SimilarityTarget
from ._targets import (
    CallableTarget,
    ClassScore,
    ClassTarget,
    RegressionTarget,
    ScoredTarget,
    SegmentationTarget,
    SigmoidTarget,
    SoftmaxTarget,
    Target,
)

__all__ = [
    "AllClasses",
    "BoxFormat",
    "BoxTarget",
    "CallableTarget",
    "ClassScore",
    "ClassTarget",
    "Classes",
    "RegressionTarget",
    "ScoredTarget",
    "SegmentationTarget",
    "SigmoidTarget",
    "SimilarityTarget",
    "SoftmaxTarget",
    "Target",
    "TopK",
]
