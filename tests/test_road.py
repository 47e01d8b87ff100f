"""ROAD (camkit.metrics.road) and its noisy linear imputation, checked by hand, against a direct
solve, against pytorch-grad-cam, and on Keras and JAX models.

The hand-checked image is ``X = [[1, 2, 0], [0, 9, 3], [0, 0, 6]]``: a removed pixel takes the
weighted mean of its neighbours inside the image, ``1/6`` for edge and ``1/12`` for diagonal
neighbours, divided by the weight of the neighbours that exist.
"""

from __future__ import annotations

import numpy as np
import pytest
from model_kinds import KIND_NAMES, kind

import camkit
from camkit import _imputation, _noise, metrics
from camkit._road import removed_counts

X = np.array([[1, 2, 0], [0, 9, 3], [0, 0, 6]], dtype=np.float64)
# map of X: 9 at the centre (removed first by MoRF), 0 at (2, 0) (removed first by LeRF)
MAP = np.array([[[5, 4, 3], [2, 9, 1], [0, 6, 7]]], dtype=np.float32)


def impute(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """One single-channel image ``(*S)`` with the pixels ``removed`` imputed."""
    return _imputation.impute_linear(image[None, None], removed[None])[0, 0]


def test_a_removed_pixel_is_the_weighted_mean_of_its_neighbours():
    centre = np.zeros((3, 3), bool)
    centre[1, 1] = True
    # corners 1, 0, 0, 6 weigh 1/12 each, edges 2, 0, 3, 0 weigh 1/6: 7/12 + 10/12 = 17/12
    expected = X.copy()
    expected[1, 1] = 17 / 12
    np.testing.assert_allclose(impute(X, centre), expected, atol=1e-9)
    corner = np.zeros((3, 3), bool)
    corner[0, 0] = True
    # (0, 1) = 2 and (1, 0) = 0 weigh 1/6, (1, 1) = 9 weighs 1/12, out of 5/12 inside:
    # (2/6 + 9/12) / (5/12) = (4 + 9) / 5
    assert impute(X, corner)[0, 0] == pytest.approx(13 / 5, abs=1e-9)


def test_neighbouring_removed_pixels_solve_one_system():
    removed = np.zeros((3, 3), bool)
    removed[0, 0] = removed[1, 1] = True
    # centre c = (a + 0 + 0 + 6) / 12 + (2 + 0 + 3 + 0) / 6 = a / 12 + 4 / 3, corner
    # a = (2 / 6 + 0 / 6 + c / 12) / (5 / 12) = (4 + c) / 5; so c (1 - 1/60) = 84 / 60:
    # c = 84 / 59, a = (4 + 84 / 59) / 5 = 64 / 59
    got = impute(X, removed)
    assert got[1, 1] == pytest.approx(84 / 59, abs=1e-9)
    assert got[0, 0] == pytest.approx(64 / 59, abs=1e-9)
    np.testing.assert_array_equal(got[~removed], X[~removed])


def test_signals_and_volumes_weigh_their_neighbours_alike():
    # a signal's two neighbours weigh 1/2 each
    signal = impute(np.array([1.0, 0.0, 5.0]), np.array([False, True, False]))
    assert signal[1] == pytest.approx(3.0, abs=1e-9)
    # a voxel's 6 face neighbours weigh 4/56, 12 edge ones 2/56, 8 corner ones 1/56
    volume = np.zeros((3, 3, 3))
    volume[0, 1, 1] = volume[1, 0, 1] = volume[1, 1, 0] = 1.0  # three faces
    volume[0, 0, 1] = 1.0  # one edge
    volume[0, 0, 0] = 1.0  # one corner
    removed = np.zeros((3, 3, 3), bool)
    removed[1, 1, 1] = True
    assert impute(volume, removed)[1, 1, 1] == pytest.approx((3 * 4 + 2 + 1) / 56, abs=1e-9)


def _dense_reference(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The imputation solved densely, one equation per removed pixel written out."""
    height, width = removed.shape
    unknowns = {p: i for i, p in enumerate(zip(*np.nonzero(removed), strict=True))}
    matrix = np.zeros((len(unknowns), len(unknowns)))
    rhs = np.zeros(len(unknowns))
    for (y, x), i in unknowns.items():
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ny, nx = y + dy, x + dx
                if (dy, dx) == (0, 0) or not (0 <= ny < height and 0 <= nx < width):
                    continue
                weight = 1 / 12 if dy and dx else 1 / 6
                matrix[i, i] += weight
                if removed[ny, nx]:
                    matrix[i, unknowns[(ny, nx)]] -= weight
                else:
                    rhs[i] += weight * image[ny, nx]
    solved = image.copy()
    solved[removed] = np.linalg.solve(matrix, rhs)
    return solved


@pytest.mark.parametrize("shape", [(23, 17), (32, 32)])
def test_imputation_agrees_with_a_dense_solve(shape):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 2, *shape)).cumsum(axis=-1)
    y, x = np.mgrid[: shape[0], : shape[1]]
    blob = -np.hypot(y - shape[0] / 3, x - shape[1] / 2)  # a region around a point
    removed = np.stack([blob > np.percentile(blob, 40), rng.random(shape) < 0.7])
    got = _imputation.impute_linear(images, removed)
    for b in range(2):
        for c in range(2):
            expected = _dense_reference(images[b, c], removed[b])
            np.testing.assert_allclose(got[b, c], expected, atol=2e-5)


def test_removed_counts_are_pytorch_grad_cams_percentile_reading():
    # floor(q (n - 1) / 100) + 1 for n = 256: 25.5 -> 26, 51 -> 52, 127.5 -> 128, 229.5 -> 230
    assert removed_counts(np.array([10.0, 20, 50, 90]), 256).tolist() == [26, 52, 128, 230]
    rng = np.random.default_rng(1)
    for pixels in (9, 64, 150):
        values = rng.permutation(pixels).astype(np.float32)  # distinct
        for q in (5, 10, 25, 33, 50, 75, 90):
            at_or_above = int(np.sum(values >= np.percentile(values, 100 - q)))
            assert removed_counts(np.array([float(q)]), pixels)[0] == at_or_above


@pytest.fixture
def model(numpy_backend):
    # the class-0 score is the mean of the input, the class-1 score minus that
    return numpy_backend.GapLinearModel(np.array([[1.0], [-1.0]], np.float32))


def test_road_scores_by_hand(model):
    inputs = X[None, None].astype(np.float32)
    # 10% of 9 pixels: floor(10 * 8 / 100) + 1 = 1 pixel. MoRF imputes the centre, 9 -> 17/12:
    # the mean becomes (21 - 9 + 17/12) / 9 = 161/108; the input's mean is 21/9
    most = metrics.road(model, inputs, MAP, 0, percentages=(10,), noise=0, score="target")
    np.testing.assert_allclose(most.scores, [[161 / 108]], atol=1e-6)
    np.testing.assert_allclose(most.original, [21 / 9], atol=1e-6)
    assert most.targets.tolist() == [0] and not most.higher_is_better
    # LeRF imputes (2, 0): 0 -> (0/6 + 0/6 + 9/12) / (5/12) = 9/5, the mean (21 + 9/5) / 9
    least = metrics.road(model, inputs, MAP, 0, percentages=(10,), order="least", noise=0,
                         score="target")  # fmt: skip
    np.testing.assert_allclose(least.scores, [[22.8 / 9]], atol=1e-6)
    assert least.higher_is_better


def test_summaries(model):
    inputs = np.random.default_rng(2).normal(size=(3, 1, 6, 6)).astype(np.float32)
    cams = np.random.default_rng(3).random((3, 6, 6)).astype(np.float32)
    result = metrics.road(model, inputs, cams, percentages=[20, 50, 80], seed=0)
    assert result.scores.shape == (3, 3) and result.original.shape == (3,)
    np.testing.assert_array_equal(result.percentages, [20.0, 50.0, 80.0])
    np.testing.assert_allclose(result.curve, result.scores.mean(axis=0))
    np.testing.assert_allclose(result.auc, result.scores.mean(axis=1))  # mean, not trapezoid
    assert result.mean == pytest.approx(float(result.scores.mean()))


def test_noise_is_seeded_and_drawn_per_sample_and_percentage(model):
    inputs = np.random.default_rng(4).normal(size=(2, 1, 5, 5)).astype(np.float32)
    cams = np.random.default_rng(5).random((2, 5, 5)).astype(np.float32)

    def run(**options):
        return metrics.road(model, inputs, cams, 0, percentages=(30, 60), score="target",
                            **options)  # fmt: skip

    plain = run(noise=0)
    noisy = run(noise=0.5, seed=7)
    np.testing.assert_array_equal(noisy.scores, run(noise=0.5, seed=7, batch_size=1).scores)
    assert not np.allclose(noisy.scores, run(noise=0.5, seed=8).scores)
    # the score is the image's mean, so noise moves it by 0.5 * the mean of the draw over the
    # removed pixels; draw (seed, sample i, copy j) covers the image, j = 1 + the percentage
    order = np.argsort(-cams.reshape(2, -1), axis=1, kind="stable")
    for i in range(2):
        for j, k in enumerate(removed_counts(np.array([30.0, 60.0]), 25)):
            draw = _noise.normal(7, (i, j + 1), (1, 5, 5)).reshape(-1)
            shift = 0.5 * draw[order[i, :k]].sum() / 25
            assert noisy.scores[i, j] - plain.scores[i, j] == pytest.approx(shift, abs=1e-5)


def test_errors(model):
    inputs = X[None, None].astype(np.float32)
    for bad in [(0, 50), (50, 100), (50, 20), "10", (), (True,), 50]:
        with pytest.raises(camkit.InputError, match="percentages="):
            metrics.road(model, inputs, MAP, percentages=bad)
    with pytest.raises(camkit.InputError, match="order='first'"):
        metrics.road(model, inputs, MAP, order="first")
    with pytest.raises(camkit.InputError, match="noise=-1"):
        metrics.road(model, inputs, MAP, noise=-1)
    with pytest.raises(camkit.InputError, match="seed=-2"):
        metrics.road(model, inputs, MAP, seed=-2)
    with pytest.raises(camkit.InputError, match="batch_size=0"):
        metrics.road(model, inputs, MAP, batch_size=0)
    with pytest.raises(camkit.InputError, match=r"cams have shape \(1, 2, 2\)"):
        metrics.road(model, inputs, MAP[:, :2, :2])
    with pytest.raises(camkit.InputError, match="at least 2 pixels"):
        metrics.road(model, np.ones((1, 1, 1), np.float32), np.ones((1, 1), np.float32))


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")  # the peer's numpy calls
def test_same_as_pytorch_grad_cam():
    """ROADMostRelevantFirst / ROADLeastRelevantFirst with their imputation noise set to 0:
    its percentile p keeps p% of the pixels, so camkit's percentage is 100 - p, and it
    returns the score after imputation less the score before."""
    torch = pytest.importorskip("torch")
    from pytorch_grad_cam_peer import load

    load()
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputSoftmaxTarget,
        ClassifierOutputTarget,
    )

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    cams = np.random.default_rng(6).random((2, 16, 16)).astype(np.float32)  # distinct values
    classes = [2, 0]
    percentages = (10, 30, 50, 70, 90)
    for order, peer_metric in (("most", ROADMostRelevantFirst), ("least", ROADLeastRelevantFirst)):
        for score, peer_target in (("target", ClassifierOutputTarget),
                                   ("probability", ClassifierOutputSoftmaxTarget)):  # fmt: skip
            ours = metrics.road(net, x, cams, classes, percentages=percentages, order=order,
                                noise=0, score=score)  # fmt: skip
            for j, q in enumerate(percentages):
                peer = peer_metric(percentile=100 - q)
                peer.perturbation.imputer.noise = 0
                expected = peer(x, cams, [peer_target(c) for c in classes], net)
                got = ours.scores[:, j] - ours.original
                np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=(order, score, q))


@pytest.mark.parametrize("name", [n for n in ("keras-functional", "functions") if n in KIND_NAMES])
def test_keras_and_jax_models(name):
    """The scores are the model's own softmax of the imputed images in its layout."""
    k = kind(name)
    images = np.asarray(k.inputs)
    channels_first = images.transpose(0, 3, 1, 2) if k.channels_last else images
    cams = np.random.default_rng(8).random((2, 8, 8)).astype(np.float32)
    result = metrics.road(k.model, k.inputs, cams, [0, 2], percentages=(25, 75), noise=0)
    order = np.argsort(-cams.reshape(2, -1), axis=1, kind="stable")
    for j, count in enumerate(removed_counts(np.array([25.0, 75.0]), 64)):
        removed = np.zeros((2, 64), bool)
        np.put_along_axis(removed, order[:, :count], True, axis=1)
        imputed = _imputation.impute_linear(channels_first, removed.reshape(2, 8, 8))
        native = imputed.transpose(0, 2, 3, 1) if k.channels_last else imputed
        if name == "functions":  # a JAX model as two functions
            split = k.model
            logits = np.asarray(split.head(split.params, split.features(split.params, native)))
        else:
            logits = np.asarray(k.model(native.astype(np.float32), training=False))
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(result.scores[:, j], probabilities[[0, 1], [0, 2]], atol=1e-5)
