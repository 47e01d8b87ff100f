"""Faithfulness and localization metrics: deletion and insertion, ROAD, average drop and increase
in confidence, the ranking of layers by faithfulness, the pointing game and its energy-based
form, and the export of maps for Quantus; the sanity checks of saliency maps (model-parameter
and data randomization) with the measures they compare maps by (Spearman's rank correlation,
SSIM, top-k intersection).

>>> from camkit import metrics
>>> curves = metrics.deletion(model, images, explanation)         # doctest: +SKIP
>>> curves.auc, curves.mean                                        # doctest: +SKIP
>>> print(metrics.parameter_randomization(model, images))         # doctest: +SKIP
"""

from ._faithfulness import ConfidenceChange, Curves, confidence_change, deletion, insertion
from ._layer_sweep import LayerSweep, layer_sweep
from ._localization import (
    EnergyPointing,
    PointingGame,
    energy_pointing_game,
    pointing_game,
    quantus_attributions,
)
from ._map_similarity import spearman_correlation, ssim, top_k_intersection
from ._road import RoadCurves, road
from ._sanity import SanityCheck, data_randomization, parameter_randomization

__all__ = [
    "ConfidenceChange",
    "Curves",
    "EnergyPointing",
    "LayerSweep",
    "PointingGame",
    "RoadCurves",
    "SanityCheck",
    "confidence_change",
    "data_randomization",
    "deletion",
    "energy_pointing_game",
    "insertion",
    "layer_sweep",
    "parameter_randomization",
    "pointing_game",
    "quantus_attributions",
    "road",
    "spearman_correlation",
    "ssim",
    "top_k_intersection",
]
