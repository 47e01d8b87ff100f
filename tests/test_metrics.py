"""camkit.metrics checked against values computed by hand.

The model is the toy ``GapLinearModel`` with ``W = [[1], [-1]]``: the class-0 logit of an input
is its mean and the class-1 logit minus that. The input is ``X = [[1, 2], [3, 4]]`` and the map
``M = [[4, 3], [2, 1]]``: pixels ranked (0, 0), (0, 1), (1, 0), (1, 1).
"""

from __future__ import annotations

import numpy as np
import pytest

import camkit
from camkit import _ops, metrics

X = np.array([[[[1, 2], [3, 4]]]], dtype=np.float32)
MAP = np.array([[[4, 3], [2, 1]]], dtype=np.float32)


@pytest.fixture
def model(numpy_backend):
    return numpy_backend.GapLinearModel(np.array([[1.0], [-1.0]], np.float32))


def test_deletion_curve_and_auc(model):
    # removed (set to 0) in rank order: means 10/4, 9/4, 7/4, 4/4, 0
    curves = metrics.deletion(model, X, MAP, target=0, steps=4, score="target")
    np.testing.assert_allclose(curves.scores[0], [2.5, 2.25, 1.75, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(curves.fractions, [0, 0.25, 0.5, 0.75, 1])
    # trapezoids over steps of 1/4: (sum - (first + last) / 2) / 4 = (7.5 - 1.25) / 4
    np.testing.assert_allclose(curves.auc, [1.5625], atol=1e-6)
    assert curves.mean == pytest.approx(1.5625)


def test_auc_is_the_trapezoidal_rule_over_the_fractions_removed(model):
    # 3 steps over 4 pixels remove floor(4 i / 3) = 0, 1, 2, 4 pixels: fractions 0, 1/4, 1/2, 1
    # and means 10/4, 9/4, 7/4, 0; trapezoids 1/4 (2.5 + 2.25) / 2 + 1/4 (2.25 + 1.75) / 2
    # + 1/2 (1.75 + 0) / 2 = 0.59375 + 0.5 + 0.4375 (uneven widths, not (sum - ends / 2) / 3)
    curves = metrics.deletion(model, X, MAP, target=0, steps=3, score="target")
    np.testing.assert_allclose(curves.fractions, [0, 0.25, 0.5, 1])
    np.testing.assert_allclose(curves.scores[0], [2.5, 2.25, 1.75, 0.0], atol=1e-6)
    np.testing.assert_allclose(curves.auc, [1.53125], atol=1e-6)


def test_insertion_curve_with_a_constant_baseline(model):
    # inserted into zeros in rank order: means 0, 1/4, 3/4, 6/4, 10/4
    curves = metrics.insertion(model, X, MAP, target=0, steps=4, baseline=0.0, score="target")
    np.testing.assert_allclose(curves.scores[0], [0, 0.25, 0.75, 1.5, 2.5], atol=1e-6)
    np.testing.assert_allclose(curves.auc, [(5.0 - 1.25) / 4], atol=1e-6)


def test_probability_score_and_top1_pinning(model):
    # softmax of (m, -m) at class 0 is sigmoid(2m); the top-1 class of X is 0 and stays 0
    curves = metrics.deletion(model, X, MAP, steps=4)
    means = np.array([2.5, 2.25, 1.75, 1.0, 0.0])
    np.testing.assert_allclose(curves.scores[0], 1 / (1 + np.exp(-2 * means)), atol=1e-6)
    assert curves.targets.tolist() == [0]


def test_insertion_default_baseline_is_the_blurred_input(model):
    curves = metrics.insertion(model, X, MAP, target=0, steps=2, score="target", blur_sigma=1.0)
    blurred = _ops.blur_gaussian(X, 1.0)
    assert curves.scores[0, 0] == pytest.approx(float(blurred.mean()), abs=1e-6)
    assert curves.scores[0, -1] == pytest.approx(2.5, abs=1e-6)


def test_blur_agrees_with_scipy_away_from_the_border():
    ndimage = pytest.importorskip("scipy.ndimage")
    image = np.random.default_rng(0).normal(size=(1, 1, 40, 40)).astype(np.float32)
    got = _ops.blur_gaussian(image, 2.0)[0, 0]
    expected = ndimage.gaussian_filter(image[0, 0], 2.0, truncate=3.0)
    np.testing.assert_allclose(got[8:-8, 8:-8], expected[8:-8, 8:-8], atol=1e-5)
    constant = np.full((1, 3, 9, 9), 0.5, np.float32)
    np.testing.assert_allclose(_ops.blur_gaussian(constant, 3.0), constant, atol=1e-6)


def test_confidence_change(model):
    # normalized map [[1, 2/3], [1/3, 0]]: X * M has mean (1 + 4/3 + 1 + 0) / 4 = 5/6
    normalized = (MAP - 1) / 3
    change = metrics.confidence_change(model, X, normalized, target=0, score="target")
    np.testing.assert_allclose(change.original, [2.5])
    np.testing.assert_allclose(change.explained, [5 / 6], atol=1e-6)
    np.testing.assert_allclose(change.drop, [(2.5 - 5 / 6) / 2.5], atol=1e-6)
    assert change.average_drop == pytest.approx(100 * 2 / 3, abs=1e-4)
    assert change.increase_in_confidence == 0.0
    # class 1 scores -mean: the explanation raises it, no drop, an increase
    up = metrics.confidence_change(model, X, normalized, target=1, score="target")
    assert up.average_drop == 0.0 and up.increase_in_confidence == 100.0


def test_average_drop_is_in_percent(model):
    # sample 0 as above drops by (2.5 - 5/6) / 2.5 = 2/3 of its score; sample 1's map is all
    # ones, so O = Y and it drops by 0: mean(drop) = 1/3, average_drop = 100/3 percent (not 1/3)
    normalized = np.concatenate([(MAP - 1) / 3, np.ones_like(MAP)])
    change = metrics.confidence_change(model, np.concatenate([X, X]), normalized, target=0,
                                       score="target")  # fmt: skip
    np.testing.assert_allclose(change.drop, [2 / 3, 0], atol=1e-6)
    assert change.average_drop == pytest.approx(100 / 3, abs=1e-4)
    assert change.increase_in_confidence == 0.0  # O > Y for neither (O = Y is no increase)


def test_metrics_take_an_explanation(model):
    explanation = camkit.explain(model, X, "gradcam", target=0)
    curves = metrics.deletion(model, X, explanation, steps=4)
    assert curves.scores.shape == (1, 5)


def test_pointing_game_boxes_masks_and_tolerance():
    maps = np.zeros((3, 10, 10), np.float32)
    maps[0, 2, 3] = 1  # peak at row 2, column 3
    maps[1, 8, 8] = 1
    maps[2, 5, 5] = 1
    boxes = [(2, 1, 5, 4), (0, 0, 4, 4), [(0, 0, 1, 1), (5, 5, 6, 6)]]  # (x0, y0, x1, y1)
    game = metrics.pointing_game(maps, boxes, tolerance=0)
    assert game.hits.tolist() == [True, False, True]
    assert game.accuracy == pytest.approx(2 / 3)
    # (8, 8) is sqrt(5^2 + 5^2) = 7.07 pixels from the box's last pixel (3, 3)
    assert metrics.pointing_game(maps[1:2], [(0, 0, 4, 4)], tolerance=7.1).hits.tolist() == [True]
    assert metrics.pointing_game(maps[1:2], [(0, 0, 4, 4)], tolerance=7.0).hits.tolist() == [False]
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 8, 8] = True
    assert metrics.pointing_game(maps[1:2], masks).hits.tolist() == [True]


def test_energy_pointing_game():
    cam = np.array([[[1, 3], [0, 4]]], np.float32)
    energy = metrics.energy_pointing_game(cam, [(1, 0, 2, 2)])  # right column: 3 + 4 of 8
    np.testing.assert_allclose(energy.proportions, [7 / 8])
    assert metrics.energy_pointing_game(np.zeros((1, 2, 2)), [(0, 0, 1, 1)]).mean == 0.0


def test_quantus_export():
    cams = np.random.default_rng(0).random((2, 7, 7)).astype(np.float32)
    exported = metrics.quantus_attributions(cams)
    assert exported.shape == (2, 1, 7, 7) and exported.dtype == np.float32
    np.testing.assert_array_equal(exported[:, 0], cams)
    assert metrics.quantus_attributions(cams, size=(14, 14)).shape == (2, 1, 14, 14)


def test_errors(model):
    with pytest.raises(camkit.InputError, match=r"cams have shape \(1, 3, 3\)"):
        metrics.deletion(model, X, np.zeros((1, 3, 3)))
    with pytest.raises(camkit.InputError, match="steps=0"):
        metrics.deletion(model, X, MAP, steps=0)
    with pytest.raises(camkit.InputError, match="precision='fp8'"):
        metrics.deletion(model, X, MAP, precision="fp8")
    with pytest.raises(camkit.InputError, match="batch_size=0"):
        metrics.confidence_change(model, X, MAP, batch_size=0)
    with pytest.raises(camkit.InputError, match="baseline='mean'"):
        metrics.insertion(model, X, MAP, baseline="mean")
    with pytest.raises(camkit.InputError, match="regions hold 2 items for 1 maps"):
        metrics.pointing_game(MAP, [(0, 0, 1, 1), (0, 0, 1, 1)])
    with pytest.raises(camkit.TargetError, match="out of range"):
        metrics.deletion(model, X, MAP, target=5)
