"""``camkit.compare``: agreement of two batches of maps, every number derived by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import camkit

A = np.array([[[0.0, 1.0], [2.0, 3.0]]])


def test_the_same_order_agrees_fully():
    # b = 2a: correlations 1, |a - b| at most |3 - 6| = 3, the top pixel (1, 1) shared
    agreement = camkit.compare(A, 2 * A, top=1)
    np.testing.assert_allclose(agreement.pearson, [1.0])
    np.testing.assert_allclose(agreement.spearman, [1.0])
    np.testing.assert_allclose(agreement.max_difference, [3.0])
    np.testing.assert_allclose(agreement.top_iou, [1.0])
    assert agreement.same_peak.tolist() == [True] and agreement.top_pixels == 1


def test_the_reversed_order_disagrees_fully():
    # b = 3 - a: correlations -1; |a - b| = |2a - 3| at most 3; tops (1, 1) and (0, 0) share
    # nothing and lie sqrt(2) apart
    agreement = camkit.compare(A, 3 - A, top=1)
    np.testing.assert_allclose(agreement.pearson, [-1.0])
    np.testing.assert_allclose(agreement.spearman, [-1.0])
    np.testing.assert_allclose(agreement.max_difference, [3.0])
    np.testing.assert_allclose(agreement.top_iou, [0.0])
    np.testing.assert_allclose(agreement.peak_distance, [math.sqrt(2)])


def test_two_pixels_swapped():
    """a = [0, 1, 2, 3], c = [0, 1, 3, 2]: centred [-1.5, -0.5, 0.5, 1.5] and
    [-1.5, -0.5, 1.5, 0.5], dot 2.25 + 0.25 + 0.75 + 0.75 = 4 over norms 5: 0.8 for values and
    ranks alike; the top two pixels are the same two (IoU 1), the top one moves one pixel. Against
    d = [1, 0, 2, 3] the top three, {3, 2, 1} and {3, 2, 0}, share two: 2 / (6 - 2) = 0.5."""
    c = np.array([[[0.0, 1.0], [3.0, 2.0]]])
    agreement = camkit.compare(A, c, top=2)
    np.testing.assert_allclose(agreement.pearson, [0.8])
    np.testing.assert_allclose(agreement.spearman, [0.8])
    np.testing.assert_allclose(agreement.max_difference, [1.0])
    np.testing.assert_allclose(agreement.top_iou, [1.0])
    np.testing.assert_allclose(agreement.peak_distance, [1.0])
    d = np.array([[[1.0, 0.0], [2.0, 3.0]]])
    np.testing.assert_allclose(camkit.compare(A, d, top=3).top_iou, [0.5])
    assert camkit.compare(A, c, top=0.5).top_pixels == 2  # a fraction of the 4 pixels


def test_constant_maps_and_means():
    flat = np.zeros((1, 2, 2))
    assert camkit.compare(flat, flat).pearson.tolist() == [1.0]
    assert camkit.compare(A, flat).pearson.tolist() == [0.0]
    both = camkit.compare(np.concatenate([A, A]), np.concatenate([2 * A, 3 - A]), top=1)
    assert both.means["pearson"] == pytest.approx(0.0)
    assert both.means["same_peak"] == 0.5
    assert "pearson" in str(both)


def test_explanations_of_two_methods_and_shape_errors():
    torch = pytest.importorskip("torch")
    from test_torch import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 12, 12)
    grad = camkit.explain(model, x, "gradcam", "conv2")
    same = camkit.compare(grad, camkit.explain(model, x, "gradcam", "conv2"))
    assert same.means["pearson"] == pytest.approx(1.0) and same.means["max_difference"] == 0.0
    layer = camkit.explain(model, x, "gradcam", "conv2", size="layer")
    with pytest.raises(camkit.InputError, match="shapes"):
        camkit.compare(grad, layer)
    with pytest.raises(camkit.InputError, match="top_k=0"):
        camkit.compare(grad, grad, top=0)
