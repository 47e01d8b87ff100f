"""Target behaviour every backend must show, checked the same way for each, and the methods
whose maps every backend must reproduce."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import camkit
from camkit import targets

RAW = {"relu": False, "normalize": "none", "size": "layer"}
#: The perturbation methods and Smooth Grad-CAM++, with options that keep the runs short.
PERTURBATION_METHODS = [
    ("scorecam", {}),
    ("sscam", {"samples": 2, "noise": 0.3, "seed": 4}),
    ("iscam", {"samples": 2}),
    ("fasterscorecam", {"channels": 3}),
    ("ablationcam", {}),
    ("smoothgradcam++", {"samples": 3, "seed": 4}),
]


def check_class_targets(model: Any, inputs: Any, logits: np.ndarray, layer: str) -> None:
    """Top-1, softmax and callable targets, and an out-of-range index, on a 5-class model.

    ``logits`` are the model's outputs for ``inputs``, as numpy.
    """
    top = camkit.explain(model, inputs, layer=layer)
    assert top.targets.tolist() == logits.argmax(1).tolist()
    np.testing.assert_allclose(top.scores, logits.max(1), atol=1e-5)

    soft = camkit.explain(model, inputs, layer=layer, target=targets.SoftmaxTarget(2))
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    probabilities = shifted / shifted.sum(1, keepdims=True)
    np.testing.assert_allclose(soft.scores, probabilities[:, 2], atol=1e-6)

    # the gradient of a difference of logits is the difference of their gradients
    margin = camkit.explain(model, inputs, layer=layer, target=lambda y: y[:, 1] - y[:, 0], **RAW)
    one = camkit.explain(model, inputs, "gradcam", layer, target=1, **RAW).cams
    zero = camkit.explain(model, inputs, "gradcam", layer, target=0, **RAW).cams
    np.testing.assert_allclose(margin.cams, one - zero, atol=1e-5)
    assert margin.targets.tolist() == [-1] * len(logits)

    with pytest.raises(camkit.TargetError, match="target=7 is out of range: the model has 5"):
        camkit.explain(model, inputs, layer=layer, target=7)
