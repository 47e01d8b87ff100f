"""The array math: hand values, independent references, and the same numbers in every namespace."""

from __future__ import annotations

import numpy as np
import pytest

from camkit import InputError, _ops

rng = np.random.default_rng(0)
X = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
W = rng.normal(size=(2, 3)).astype(np.float32)
M = rng.normal(size=(2, 5, 4)).astype(np.float32)


def test_hand_values():
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)  # channel 0: 0..3, channel 1: 4..7
    np.testing.assert_allclose(_ops.spatial_mean(x), [[1.5, 5.5]])
    np.testing.assert_allclose(_ops.spatial_sum(x)[..., 0, 0], [[6, 22]])
    # 2 * [[0, 1], [2, 3]] - [[4, 5], [6, 7]]
    weighted = _ops.weighted_channel_sum(np.array([[2, -1]], np.float32), x)
    np.testing.assert_allclose(weighted, [[[-4, -3], [-2, -1]]])
    np.testing.assert_allclose(_ops.relu(np.array([-1.0, 0.0, 2.0])), [0, 0, 2])


def test_minmax_normalization():
    maps = np.array([[[1, 3], [5, 9]], [[0, 0], [0, 0]], [[2, 2], [2, 2]]], np.float32)
    got = _ops.normalize_minmax(maps)
    np.testing.assert_allclose(got[0], [[0, 0.25], [0.5, 1]])
    assert np.array_equal(got[1:], np.zeros((2, 2, 2)))  # constant maps: zeros, never NaN
    assert not np.isnan(got).any()


def test_normalization_does_not_mutate():
    maps = M.copy()
    _ops.normalize_minmax(maps)
    _ops.relu(maps)
    assert np.array_equal(maps, M)


@pytest.mark.parametrize("size", [(10, 8), (224, 224), (3, 2), (5, 4), (7, 13)])
def test_resize_matches_torch_interpolate(size):
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(M)[:, None], size=size, mode="bilinear", align_corners=False
    )[:, 0].numpy()
    np.testing.assert_allclose(_ops.resize_bilinear(M, size), expected, atol=1e-6)


@pytest.mark.parametrize("size", [(10, 8), (224, 224), (7, 13)])
def test_resize_matches_opencv(size):
    import cv2

    expected = np.stack([cv2.resize(m, size[::-1], interpolation=cv2.INTER_LINEAR) for m in M])
    np.testing.assert_allclose(_ops.resize_bilinear(M, size), expected, atol=1e-5)


def test_resize_rows_are_a_partition_of_unity():
    matrix = _ops._interpolation_matrix(9, 4)
    np.testing.assert_allclose(matrix.sum(axis=1), np.ones(9), atol=1e-6)


def test_fusion_modes():
    a = np.array([[[0.0, 1.0]]], np.float32)
    b = np.array([[[0.5, 0.5]]], np.float32)
    np.testing.assert_allclose(_ops.fuse([a, b], "mean"), [[[0.25, 0.75]]])
    np.testing.assert_allclose(_ops.fuse([a, b], "max"), [[[0.5, 1.0]]])
    np.testing.assert_allclose(_ops.fuse([a, b], "product"), [[[0.0, 0.5]]])
    with pytest.raises(InputError, match="fusion='median'"):
        _ops.fuse([a, b], "median")  # type: ignore[arg-type]


def test_tokens_to_grid_drops_the_class_token():
    tokens = rng.normal(size=(2, 1 + 9, 4)).astype(np.float32)
    grid = _ops.tokens_to_grid(tokens)
    assert grid.shape == (2, 4, 3, 3)
    # patch (row 1, column 2) is token 1 + 1 * 3 + 2
    np.testing.assert_array_equal(grid[:, :, 1, 2], tokens[:, 1 + 5, :])


def test_tokens_to_grid_with_registers_and_non_square_grid():
    tokens = rng.normal(size=(1, 5 + 2 * 6, 3)).astype(np.float32)  # class + 4 registers
    grid = _ops.tokens_to_grid(tokens, grid=(2, 6))
    assert grid.shape == (1, 3, 2, 6)
    np.testing.assert_array_equal(grid[0, :, 1, 0], tokens[0, 5 + 6])
    inferred = _ops.tokens_to_grid(rng.normal(size=(1, 5 + 16, 3)).astype(np.float32))
    assert inferred.shape == (1, 3, 4, 4)  # 21 tokens: the fewest dropped for a square is 5


def test_tokens_to_grid_explains_a_bad_grid():
    tokens = np.zeros((1, 10, 3), np.float32)
    with pytest.raises(InputError, match=r"prefix_tokens \+ h \* w == 10"):
        _ops.tokens_to_grid(tokens, grid=(4, 4))


def test_first_principal_projection_of_a_rank_one_map():
    # activations c * m[i, j]: the projection on the first direction is |c| * m
    pattern = rng.uniform(0.1, 1.0, size=(4, 5)).astype(np.float32)
    weights = np.array([1.0, 2.0, 2.0], np.float32)  # |c| = 3
    x = weights[None, :, None, None] * pattern[None, None]
    np.testing.assert_allclose(_ops.first_principal_projection(x)[0], 3 * pattern, atol=1e-5)
    np.testing.assert_allclose(_ops.first_principal_projection(-x)[0], 3 * pattern, atol=1e-5)


def _all_ops(xp_asarray):
    """Every op on arrays of one namespace, returned as numpy for comparison."""
    x, w, m = xp_asarray(X), xp_asarray(W), xp_asarray(M)
    tokens = xp_asarray(rng.normal(size=(2, 17, 3)).astype(np.float32))
    return {
        "spatial_mean": _ops.spatial_mean(x),
        "weighted_channel_sum": _ops.weighted_channel_sum(w, x),
        "relu": _ops.relu(m),
        "normalize_minmax": _ops.normalize_minmax(m),
        "resize_bilinear": _ops.resize_bilinear(m, (11, 7)),
        "fuse": _ops.fuse([m, _ops.relu(m)], "product"),
        "tokens_to_grid": _ops.tokens_to_grid(tokens),
        "first_principal_projection": _ops.first_principal_projection(_ops.relu(x)),
    }


def assert_same_numbers_as_numpy(asarray, array_type) -> None:
    """Run every op on numpy and on ``asarray``'s namespace with the same data; compare."""
    state = rng.bit_generator.state
    reference = _all_ops(np.asarray)
    rng.bit_generator.state = state
    other = _all_ops(asarray)
    for name, value in reference.items():
        assert isinstance(other[name], array_type), name
        np.testing.assert_allclose(np.asarray(other[name]), value, atol=1e-5, err_msg=name)


def test_same_numbers_on_torch_tensors():
    torch = pytest.importorskip("torch")
    assert_same_numbers_as_numpy(torch.from_numpy, torch.Tensor)


def test_only_array_api_standard_calls():
    strict = pytest.importorskip("array_api_strict")
    assert_same_numbers_as_numpy(strict.asarray, strict._array_object.Array)
