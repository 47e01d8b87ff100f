"""The map-similarity measures of the sanity checks, on tiny maps computed by hand, and against
``scipy.stats.spearmanr`` and ``skimage.metrics.structural_similarity`` where installed."""

from __future__ import annotations

import math

import numpy as np
import pytest

import camkit
from camkit import metrics

RNG = np.random.default_rng(5)


# -- Spearman's rank correlation ---------------------------------------------------------------


def test_spearman_of_one_swap():
    # ranks [1, 2, 3, 4] and [1, 3, 2, 4]: d = (0, 1, -1, 0), so without ties
    # rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / (4 * 15) = 0.8
    rho = metrics.spearman_correlation([[1.0, 2, 3, 4]], [[1.0, 3, 2, 4]])
    np.testing.assert_allclose(rho, [0.8])


def test_spearman_ties_share_their_mean_rank():
    # a = [1, 1, 2, 3] ranks [1.5, 1.5, 3, 4]; b ranks [1, 2, 3, 4]; centred on 2.5:
    # a' = [-1, -1, .5, 1.5], b' = [-1.5, -.5, .5, 1.5]; a'.b' = 1.5 + .5 + .25 + 2.25 = 4.5,
    # |a'|^2 = 1 + 1 + .25 + 2.25 = 4.5, |b'|^2 = 2.25 + .25 + .25 + 2.25 = 5:
    # rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    rho = metrics.spearman_correlation([[1.0, 1, 2, 3]], [[1.0, 2, 3, 4]])
    np.testing.assert_allclose(rho, [3 / math.sqrt(10)])


def test_spearman_of_absolute_values():
    # a = [-3, 1, 2] ranks [1, 2, 3], b = [3, 1, 2] ranks [3, 1, 2]; centred [-1, 0, 1] and
    # [1, -1, 0]: rho = -1 / (sqrt(2) sqrt(2)) = -0.5; |a| = b, so with absolute values rho = 1
    a, b = [[-3.0, 1, 2]], [[3.0, 1, 2]]
    np.testing.assert_allclose(metrics.spearman_correlation(a, b), [-0.5])
    np.testing.assert_allclose(metrics.spearman_correlation(a, b, absolute=True), [1.0])


def test_spearman_of_constant_maps():
    # a constant map has no order: 0 against a map with one, 1 against another constant map
    flat, ramp = np.zeros((1, 2, 3)), np.arange(6.0).reshape(1, 2, 3)
    np.testing.assert_array_equal(metrics.spearman_correlation(flat, ramp), [0.0])
    np.testing.assert_array_equal(metrics.spearman_correlation(ramp, flat), [0.0])
    np.testing.assert_array_equal(metrics.spearman_correlation(flat, flat + 1), [1.0])


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    # quarters, so that many pixels tie (exactly in float32, as camkit's maps are)
    a = np.round(RNG.random((3, 9, 7)) * 4) / 4
    b = np.round(RNG.random((3, 9, 7)) * 4) / 4 - 0.5
    for absolute in (False, True):
        rho = metrics.spearman_correlation(a, b, absolute=absolute)
        wanted = [
            stats.spearmanr(np.abs(x.ravel()) if absolute else x.ravel(),
                            np.abs(y.ravel()) if absolute else y.ravel()).statistic
            for x, y in zip(a, b, strict=True)
        ]  # fmt: skip
        np.testing.assert_allclose(rho, wanted, rtol=1e-12)


def test_maps_must_have_one_shape():
    with pytest.raises(camkit.InputError, match=r"shapes \(2, 4, 4\) and \(2, 4, 5\)"):
        metrics.spearman_correlation(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(camkit.InputError, match=r"other_cams hold NaN or inf for samples \[0\]"):
        metrics.ssim(np.zeros((1, 4, 4)), np.full((1, 4, 4), np.nan))


# -- SSIM ----------------------------------------------------------------------------------------


def test_ssim_of_a_map_with_itself_is_one():
    maps = RNG.random((2, 12, 12))
    np.testing.assert_allclose(metrics.ssim(maps, maps), [1.0, 1.0])


def test_ssim_of_two_constant_maps():
    # no variance: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) at every position;
    # mu_a = 0, mu_b = 1, C1 = 0.01^2: 1e-4 / (1 + 1e-4)
    index = metrics.ssim(np.zeros((1, 8, 8)), np.ones((1, 8, 8)))
    np.testing.assert_allclose(index, [1e-4 / (1 + 1e-4)])


def test_ssim_of_a_short_signal_by_hand():
    # 3 samples: the window narrows to the 3 taps of the Gaussian (sigma 1.5) at offsets
    # -1, 0, 1, weights e^(-2/9), 1, e^(-2/9) normalized, w = (p, q, p), and fits once.
    e = math.exp(-2 / 9)
    p, q = e / (1 + 2 * e), 1 / (1 + 2 * e)
    # a = (0, 1, 0): mu_a = q, sigma_a^2 = q - q^2; b = (1, 0, 1): mu_b = 2p,
    # sigma_b^2 = 2p - 4p^2; sigma_ab = E[ab] - mu_a mu_b = 0 - 2pq
    mu_a, mu_b = q, 2 * p
    var_a, var_b, cov = q - q**2, 2 * p - 4 * p**2, -2 * p * q
    c1, c2 = 0.01**2, 0.03**2
    wanted = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )  # about -0.895: opposite structure
    index = metrics.ssim([[0.0, 1.0, 0.0]], [[1.0, 0.0, 1.0]])
    np.testing.assert_allclose(index, [wanted], rtol=1e-12)
    assert -0.9 < wanted < -0.89


@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 12, 20)])
def test_ssim_matches_scikit_image(shape):
    skimage_metrics = pytest.importorskip("skimage.metrics")
    a, b = RNG.random(shape), RNG.random(shape)
    b[0] = np.clip(a[0] + RNG.normal(0, 0.05, shape[1:]), 0, 1)  # a similar pair
    a, b = a.astype(np.float32), b.astype(np.float32)  # as camkit's maps are
    wanted = [
        skimage_metrics.structural_similarity(x.astype(np.float64), y.astype(np.float64),
                                              data_range=1.0, gaussian_weights=True,
                                              sigma=1.5, use_sample_covariance=False)
        for x, y in zip(a, b, strict=True)
    ]  # fmt: skip
    np.testing.assert_allclose(metrics.ssim(a, b), wanted, rtol=1e-10)
    assert wanted[0] > 0.8


def test_ssim_of_volumes():
    volumes = RNG.random((2, 4, 12, 12))
    index = metrics.ssim(volumes, volumes[::-1])
    assert index.shape == (2,) and (index < 0.5).all()
    np.testing.assert_allclose(metrics.ssim(volumes, volumes), [1.0, 1.0])


def test_ssim_takes_maps_in_the_unit_range():
    with pytest.raises(camkit.InputError, match=r"cams hold values from -1 to 1.*\[0, 1\]"):
        metrics.ssim(np.linspace(-1, 1, 16).reshape(1, 4, 4), np.zeros((1, 4, 4)))


# -- top-k intersection --------------------------------------------------------------------------


def test_top_k_intersection_by_hand():
    a = [[5.0, 4, 3, 2, 1, 0]]  # pixels by saliency: 0, 1, 2, 3, 4, 5
    b = [[0.0, 4, 5, 1, 2, 3]]  # pixels by saliency: 2, 1, 5, 4, 3, 0
    # top 2: {0, 1} and {2, 1} share 1 pixel of 2
    np.testing.assert_allclose(metrics.top_k_intersection(a, b, 2), [0.5])
    # a fraction: round(0.5 * 6) = 3 pixels, {0, 1, 2} and {2, 1, 5} share 2 of 3
    np.testing.assert_allclose(metrics.top_k_intersection(a, b, 0.5), [2 / 3])
    np.testing.assert_allclose(metrics.top_k_intersection(a, b, 6), [1.0])


def test_top_k_ties_go_by_position():
    # all tied: the top 2 are the first two pixels, (0, 0) and (0, 1); b's are (1, 0), (1, 1)
    a = np.ones((1, 2, 2))
    b = np.array([[[0.0, 0.0], [1.0, 1.0]]])
    np.testing.assert_array_equal(metrics.top_k_intersection(a, b, 2), [0.0])


@pytest.mark.parametrize(
    ("top_k", "message"),
    [(0, "positive integer"), (7, "more than the maps' 6 pixels"), (0.0, r"\(0, 1\]"),
     (1.5, "from 0 to 1"), (True, "positive integer"), ("10%", "positive integer")],
)  # fmt: skip
def test_top_k_must_be_a_count_or_a_fraction(top_k, message):
    with pytest.raises(camkit.InputError, match=message):
        metrics.top_k_intersection(np.zeros((1, 6)), np.zeros((1, 6)), top_k)
