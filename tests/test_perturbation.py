"""The perturbation family (Score-CAM, SS-CAM, IS-CAM, Faster Score-CAM, Ablation-CAM) and
Smooth Grad-CAM++, checked against values computed by hand on the toy numpy backend.

The model is ``GapLinearModel``: its input is the layer ``A`` itself, then global average
pooling and a linear layer ``W``. With

A[0] = [[1, 2], [3, 4]]       H_0 = minmax(A[0]) = [[0, 1/3], [2/3, 1]]
A[1] = [[1, 1], [1, -2]]      H_1 = minmax(A[1]) = [[1, 1], [1, 0]]

and ``W = I``, the logits of the masked inputs ``A * H_k`` are the channel means:
``A * H_0 -> (5/3, -1/4)`` and ``A * H_1 -> (3/2, 3/4)``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

import camkit
from camkit._progress import Progress

A = np.array([[[[1, 2], [3, 4]], [[1, 1], [1, -2]]]], dtype=np.float32)
RAW = {"relu": False, "normalize": "none", "size": "layer"}


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.fixture
def identity_model(numpy_backend):
    return numpy_backend.GapLinearModel(np.eye(2, dtype=np.float32))


def raw_map(model, method, inputs=A, target=1, **options):
    return camkit.explain(model, inputs, method=method, target=target, **{**RAW, **options}).cams


def test_scorecam_class_softmax(identity_model):
    # w_k = softmax(logits of A * H_k)[1]: w_0 = sigmoid(-1/4 - 5/3), w_1 = sigmoid(3/4 - 3/2)
    w0, w1 = sigmoid(-1 / 4 - 5 / 3), sigmoid(3 / 4 - 3 / 2)
    expected = w0 * A[0, 0] + w1 * A[0, 1]
    np.testing.assert_allclose(raw_map(identity_model, "scorecam")[0], expected, atol=1e-6)


def test_scorecam_channel_softmax(identity_model):
    # torchcam's reading: softmax over channels of the class-1 logits (-1/4, 3/4)
    w0, w1 = 1 / (1 + np.e), np.e / (1 + np.e)
    got = raw_map(identity_model, "scorecam", weighting="channel-softmax")[0]
    np.testing.assert_allclose(got, w0 * A[0, 0] + w1 * A[0, 1], atol=1e-6)


def test_iscam_cumulative_coefficients(identity_model):
    # samples=2: masks scaled by c = 1/2 and 1/2 + 2/2 = 3/2; the logits scale with c
    def weight(l0, l1):
        return np.mean([sigmoid(c * (l1 - l0)) for c in (0.5, 1.5)])

    expected = weight(5 / 3, -1 / 4) * A[0, 0] + weight(3 / 2, 3 / 4) * A[0, 1]
    got = raw_map(identity_model, "iscam", samples=2)[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_sscam_without_noise_is_scorecam_and_noise_is_seeded(identity_model):
    reference = raw_map(identity_model, "scorecam")
    np.testing.assert_allclose(raw_map(identity_model, "sscam", samples=3, noise=0.0), reference)
    noisy = raw_map(identity_model, "sscam", samples=3, noise=0.5, seed=7)
    np.testing.assert_array_equal(noisy, raw_map(identity_model, "sscam", samples=3, noise=0.5,
                                                 seed=7))  # fmt: skip
    assert np.abs(noisy - reference).max() > 1e-3


def test_faster_scorecam_keeps_the_channels_of_largest_variance(identity_model):
    # Var A[0] = 1.25 < Var A[1] = 1.6875: only channel 1 gets a weight
    got = raw_map(identity_model, "fasterscorecam", channels=1)[0]
    np.testing.assert_allclose(got, sigmoid(3 / 4 - 3 / 2) * A[0, 1], atol=1e-6)
    every = raw_map(identity_model, "fasterscorecam", channels=2)
    np.testing.assert_allclose(every, raw_map(identity_model, "scorecam"))


def test_ablationcam(numpy_backend):
    # W = [[1, 2], [3, -1]], class 0: y = 1 * mean A[0] + 2 * mean A[1] = 2.5 + 0.5 = 3;
    # zeroing channel 0 leaves 0.5, channel 1 leaves 2.5: w = (3 - 0.5) / 3, (3 - 2.5) / 3
    model = numpy_backend.GapLinearModel(np.array([[1, 2], [3, -1]], np.float32))
    got = raw_map(model, "ablationcam", target=0)[0]
    np.testing.assert_allclose(got, 5 / 6 * A[0, 0] + 1 / 6 * A[0, 1], atol=1e-6)


def test_smooth_gradcam_plus_plus_without_noise_is_gradcam_plus_plus(numpy_backend):
    model = numpy_backend.GapLinearModel(np.array([[1, 2], [3, -1]], np.float32))
    x = np.random.default_rng(0).normal(size=(2, 2, 3, 3)).astype(np.float32)
    expected = raw_map(model, "gradcam++", inputs=x, target=None)
    got = raw_map(model, "smoothgradcam++", inputs=x, target=None, noise=0.0, samples=3)
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("method", ["scorecam", "iscam", "ablationcam"])
def test_batches_are_bounded_and_do_not_change_the_maps(numpy_backend, method):
    weights = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    x = np.random.default_rng(2).normal(size=(2, 5, 4, 4)).astype(np.float32)
    maps = {}
    for batch_size in (1, 3, 64):
        model = numpy_backend.GapLinearModel(weights)
        maps[batch_size] = raw_map(model, method, inputs=x, target=[0, 2], batch_size=batch_size)
        assert max(model.batches) <= batch_size
    np.testing.assert_allclose(maps[1], maps[64], atol=1e-6)
    np.testing.assert_allclose(maps[3], maps[64], atol=1e-6)
    for n in range(2):  # samples chunked together give each sample's own map
        alone = raw_map(numpy_backend.GapLinearModel(weights), method, inputs=x[n : n + 1],
                        target=[0, 2][n])  # fmt: skip
        np.testing.assert_allclose(maps[3][n], alone[0], atol=1e-6)


def test_a_top1_target_stays_on_the_class_of_the_unperturbed_input(numpy_backend):
    model = numpy_backend.GapLinearModel(np.eye(2, dtype=np.float32))
    top1 = camkit.explain(model, A, "scorecam", target=None, **RAW)
    assert top1.targets.tolist() == [0]  # means (2.5, 0.25)
    np.testing.assert_allclose(top1.cams, raw_map(model, "scorecam", target=0))


def test_missing_capability_is_named(numpy_backend):
    static = numpy_backend.StaticModel(A, A)
    with pytest.raises(camkit.CapabilityError, match="'forward_scores'.*'numpy' backend"):
        camkit.ScoreCAM(static)
    with pytest.raises(camkit.CapabilityError, match="forward_from_layer|forward_scores"):
        camkit.AblationCAM(static)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"weighting": "softmax"}, "weighting='softmax'"),
        ({"precision": "fp8"}, "precision='fp8'"),
    ],
)
def test_bad_options(identity_model, options, message):
    with pytest.raises(camkit.InputError, match=message):
        camkit.ScoreCAM(identity_model, **options)


def test_progress_line():
    stream = io.StringIO()
    progress = Progress("scorecam", 4, True, stream)
    progress.advance(2)
    progress.advance(2)
    progress.close()
    assert "scorecam: 4/4 forward passes" in stream.getvalue()
    assert stream.getvalue().endswith("\n")
    quiet = io.StringIO()
    Progress("scorecam", 10_000, None, quiet).advance(5)  # not a terminal: stays quiet
    assert quiet.getvalue() == ""
