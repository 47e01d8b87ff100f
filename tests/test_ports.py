"""The demo's pretrained EfficientNet-Lite0 ported to Flax NNX and Keras (examples/
efficientnet_ports.py): the same logits as PyTorch on the photos, and the same maps."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from model_kinds import keras_on_tensorflow

import camkit

pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("skimage")
pytest.importorskip("flax")
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))

pytestmark = pytest.mark.slow

TORCH = camkit.Build("torch", "efficientnet_ports:torch_efficientnet", layer="_swish")
NNX = camkit.Build("flax-nnx", "efficientnet_ports:nnx_efficientnet", layer="head_act")
KERAS = camkit.Build("keras", "efficientnet_ports:keras_efficientnet", layer="head_act")


@pytest.fixture(scope="module")
def torch_logits():
    import efficientnet_ports
    import torch

    model, images = efficientnet_ports.torch_efficientnet()
    with torch.no_grad():
        return model(images).numpy()


def relative_difference(logits, expected):
    return np.abs(np.asarray(logits) - expected).max() / np.abs(expected).max()


def test_the_ports_give_pytorchs_logits(torch_logits):
    import efficientnet_ports

    model, images = efficientnet_ports.nnx_efficientnet()
    assert relative_difference(model(images), torch_logits) < 1e-4
    if keras_on_tensorflow() is not None:
        model, images = efficientnet_ports.keras_efficientnet()
        assert relative_difference(model(images), torch_logits) < 1e-4


def test_every_framework_gives_the_same_maps():
    builds = [TORCH, NNX] + ([KERAS] if keras_on_tensorflow() is not None else [])
    study = camkit.run_study(
        builds, ["gradcam", "layercam", "eigencam", "guided-backprop"], processes=False
    )
    for row in study.rows():
        assert row["pearson"] > 0.9999 and row["max_difference"] < 1e-3, row
        assert row["top_iou"] > 0.99 and row["same_peak"] == 1.0, row
