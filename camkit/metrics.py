"""Faithfulness and localization metrics: deletion and insertion, average drop and increase in
confidence, the pointing game and its energy-based form, and the export of maps for Quantus.

>>> from camkit import metrics
>>> curves = metrics.deletion(model, images, explanation)         # doctest: +SKIP
>>> curves.auc, curves.mean                                        # doctest: +SKIP
"""

from ._metrics import (
    ConfidenceChange,
    Curves,
    EnergyPointing,
    PointingGame,
    confidence_change,
    deletion,
    energy_pointing_game,
    insertion,
    pointing_game,
    quantus_attributions,
)

__all__ = [
    "ConfidenceChange",
    "Curves",
    "EnergyPointing",
    "PointingGame",
    "confidence_change",
    "deletion",
    "energy_pointing_game",
    "insertion",
    "pointing_game",
    "quantus_attributions",
]
