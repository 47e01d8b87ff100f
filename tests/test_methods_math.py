"""Every method's formula checked against values computed by hand on a 2-channel 2x2 layer.

A[0] = [[1, 2], [3, 4]]        G[0] = [[0.5, -0.5], [1, 0]]      sum A[0] = 10
A[1] = [[1, 1], [1, -2]]       G[1] = [[2, 0], [-1, -1]]         sum A[1] = 1

Maps are checked raw (relu=False, normalize="none") unless a test is about those steps.
"""

from __future__ import annotations

import numpy as np
import pytest

import camkit

A = np.array([[[[1, 2], [3, 4]], [[1, 1], [1, -2]]]], dtype=np.float32)
G = np.array([[[[0.5, -0.5], [1, 0]], [[2, 0], [-1, -1]]]], dtype=np.float32)
RAW = {"relu": False, "normalize": "none", "size": "layer"}


@pytest.fixture
def static(numpy_backend):
    return numpy_backend.StaticModel(A, G)


def raw_map(model, method, **options):
    return camkit.explain(model, None, method=method, target=1, **{**RAW, **options}).cams[0]


def test_gradcam(static):
    # w = spatial means of G: w0 = (0.5 - 0.5 + 1 + 0) / 4 = 0.25, w1 = (2 + 0 - 1 - 1) / 4 = 0
    np.testing.assert_allclose(raw_map(static, "gradcam"), 0.25 * A[0, 0], atol=1e-6)


def test_gradcam_plus_plus_paper(static):
    # alpha = g^2 / (2 g^2 + (sum A) g^3); only pixels with g > 0 contribute to w.
    # channel 0: g=0.5 -> 0.25 / (0.5 + 10 * 0.125) = 1/7; g=1 -> 1 / (2 + 10) = 1/12
    #            w0 = 1/7 * 0.5 + 1/12 * 1 = 13/84
    # channel 1: g=2 -> 4 / (8 + 1 * 8) = 1/4; w1 = 1/4 * 2 = 1/2
    expected = 13 / 84 * A[0, 0] + 0.5 * A[0, 1]
    np.testing.assert_allclose(raw_map(static, "gradcam++"), expected, atol=1e-6)


def test_gradcam_plus_plus_author_code(static):
    # alpha further divided by its spatial sum (all pixels, negative alphas included):
    # channel 0: alphas 1/7, -1/3 (g=-0.5: 0.25 / (0.5 - 1.25)), 1/12, 0 -> sum -9/84
    #            w0 = (13/84) / (-9/84) = -13/9
    # channel 1: alphas 1/4, 0, 1 (g=-1: 1 / (2 - 1)), 1 -> sum 9/4; w1 = (1/2) / (9/4) = 2/9
    expected = -13 / 9 * A[0, 0] + 2 / 9 * A[0, 1]
    got = raw_map(static, "gradcam++", variant="author-code")
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_xgradcam(static):
    # w0 = sum(A0 G0) / sum A0 = (0.5 - 1 + 3 + 0) / 10 = 0.25
    # w1 = sum(A1 G1) / sum A1 = (2 + 0 - 1 + 2) / 1 = 3
    expected = 0.25 * A[0, 0] + 3 * A[0, 1]
    np.testing.assert_allclose(raw_map(static, "xgradcam"), expected, atol=1e-6)


def test_xgradcam_zero_activation_channel_gets_zero_weight(numpy_backend):
    activations = A.copy()
    activations[0, 1] = 0.0
    model = numpy_backend.StaticModel(activations, G)
    got = raw_map(model, "xgradcam")
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, 0.25 * A[0, 0], atol=1e-6)


def test_hirescam(static):
    # G0*A0 + G1*A1 = [[0.5, -1], [3, 0]] + [[2, 0], [-1, 2]]
    np.testing.assert_allclose(raw_map(static, "hirescam"), [[2.5, -1], [2, 2]], atol=1e-6)


def test_gradcam_elementwise(static):
    # ReLU(G0*A0) + ReLU(G1*A1) = [[0.5, 0], [3, 0]] + [[2, 0], [0, 2]]
    got = raw_map(static, "gradcam-elementwise")
    np.testing.assert_allclose(got, [[2.5, 0], [3, 2]], atol=1e-6)


def test_layercam(static):
    # ReLU(G0)*A0 + ReLU(G1)*A1 = [[0.5, 0], [3, 0]] + [[2, 0], [0, 0]]
    np.testing.assert_allclose(raw_map(static, "layercam"), [[2.5, 0], [3, 0]], atol=1e-6)


def test_cam_uses_the_target_rows_of_the_classifier(numpy_backend):
    weights = np.array([[1, -1], [0.5, 2], [0, 0]], dtype=np.float32)
    model = numpy_backend.StaticModel(A, G, classifier=weights)
    # target 1: 0.5 * A0 + 2 * A1 = [[2.5, 3], [3.5, -2]]
    np.testing.assert_allclose(raw_map(model, "cam"), [[2.5, 3], [3.5, -2]], atol=1e-6)


def _principal_projection_by_eigh(x: np.ndarray) -> np.ndarray:
    """Independent check: the top eigenvector of X^T X instead of an SVD of X."""
    matrix = x.reshape(x.shape[0], -1).T  # (HW, C)
    _, vectors = np.linalg.eigh(matrix.T @ matrix)
    projection = matrix @ vectors[:, -1]
    return (projection * (1 if projection.sum() >= 0 else -1)).reshape(x.shape[1:])


def test_eigencam(static):
    expected = _principal_projection_by_eigh(A[0])
    np.testing.assert_allclose(raw_map(static, "eigencam"), expected, atol=1e-5)


def test_eigengradcam(static):
    expected = _principal_projection_by_eigh((G * A)[0])
    np.testing.assert_allclose(raw_map(static, "eigengradcam"), expected, atol=1e-5)


def test_eigencam_sign_is_fixed_by_the_sum(numpy_backend):
    flipped = numpy_backend.StaticModel(-A, G)
    got = raw_map(flipped, "eigencam")
    assert got.sum() >= 0
    np.testing.assert_allclose(got, _principal_projection_by_eigh(-A[0]), atol=1e-5)


@pytest.mark.parametrize(
    ("method", "relu"),
    [
        ("gradcam", True),
        ("hirescam", True),
        ("layercam", True),
        ("cam", False),
        ("eigencam", False),
    ],
)
def test_relu_default_follows_the_paper(numpy_backend, method, relu):
    model = numpy_backend.StaticModel(A, G, classifier=np.eye(3, 2, dtype=np.float32))
    assert camkit.methods()[method](model).relu is relu


def test_relu_and_minmax_normalization(static):
    # HiResCAM raw [[2.5, -1], [2, 2]] -> ReLU [[2.5, 0], [2, 2]] -> / 2.5
    got = camkit.explain(static, None, method="hirescam", target=1, size="layer").cams[0]
    np.testing.assert_allclose(got, [[1, 0], [0.8, 0.8]], atol=1e-6)


def test_all_zero_map_stays_zero(numpy_backend):
    model = numpy_backend.StaticModel(A, np.zeros_like(G))
    got = camkit.explain(model, None, method="gradcam", target=1, size="layer").cams
    assert np.array_equal(got, np.zeros_like(got))


def test_output_size_pair_resizes(static):
    got = camkit.explain(static, None, method="gradcam", target=1, size=(5, 7)).cams
    assert got.shape == (1, 5, 7)
    assert got.min() == 0.0 and got.max() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("fusion", "expected"),
    [
        # per layer, HiResCAM normalized: [[1, 0], [0.8, 0.8]] and its mirror [[0, 1], [0.8, 0.8]]
        ("mean", [[0, 0], [1, 1]]),  # [[0.5, 0.5], [0.8, 0.8]], renormalized
        ("max", [[1, 1], [0, 0]]),  # [[1, 1], [0.8, 0.8]], renormalized
        ("product", [[0, 0], [1, 1]]),  # [[0, 0], [0.64, 0.64]], renormalized
    ],
)
def test_layers_fuse(numpy_backend, fusion, expected):
    mirrored = (A[..., ::-1].copy(), G[..., ::-1].copy())
    model = numpy_backend.StaticModel(A, G, extra_layers={"mirrored": mirrored})
    got = camkit.explain(
        model, None, "hirescam", ["features", "mirrored"], target=1, size="layer", fusion=fusion
    )
    assert got.layers == ("features", "mirrored")
    np.testing.assert_allclose(got.cams[0], expected, atol=1e-6)
