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
    np.testing.assert_allclose(_ops.resize_linear(M, size), expected, atol=1e-6)


@pytest.mark.parametrize("size", [(10, 8), (224, 224), (7, 13)])
def test_resize_matches_opencv(size):
    import cv2

    expected = np.stack([cv2.resize(m, size[::-1], interpolation=cv2.INTER_LINEAR) for m in M])
    np.testing.assert_allclose(_ops.resize_linear(M, size), expected, atol=1e-5)


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
    grid = _ops.tokens_to_grid(tokens, (24, 24))  # 3 x 3 patches of 8 pixels
    assert grid.shape == (2, 4, 3, 3)
    # patch (row 1, column 2) is token 1 + 1 * 3 + 2
    np.testing.assert_array_equal(grid[:, :, 1, 2], tokens[:, 1 + 5, :])


def test_tokens_to_grid_with_registers_and_non_square_grid():
    tokens = rng.normal(size=(1, 5 + 2 * 6, 3)).astype(np.float32)  # class + 4 registers
    grid = _ops.tokens_to_grid(tokens, (32, 96), grid=(2, 6))
    assert grid.shape == (1, 3, 2, 6)
    np.testing.assert_array_equal(grid[0, :, 1, 0], tokens[0, 5 + 6])
    # found from the inputs' shape: 2 x 6 patches of 16 pixels after 5 leading tokens
    np.testing.assert_array_equal(_ops.tokens_to_grid(tokens, (32, 96)), grid)


@pytest.mark.parametrize(
    ("count", "size", "expected"),
    [
        (197, (224, 224), (1, (14, 14))),  # ViT-B/16: a class token
        (198, (224, 224), (2, (14, 14))),  # DeiT: class and distillation tokens
        (261, (224, 224), (5, (16, 16))),  # ViT-S/14 with 4 registers
        (141, (224, 160), (1, (14, 10))),  # a non-square input
        (3136, (224, 224), (0, (56, 56))),  # a Swin stage: no prefix, stride 4
        (64, (30, 30), (0, (8, 8))),  # padded to a multiple of the stride (Swin, stride 4)
    ],
)
def test_token_grids_are_found_from_the_inputs_shape(count, size, expected):
    assert _ops.token_grid(count, size) == expected


def test_tokens_to_grid_explains_a_bad_grid():
    tokens = np.zeros((1, 10, 3), np.float32)
    with pytest.raises(InputError, match=r"prefix_tokens \+ the grid's cells <= 10"):
        _ops.tokens_to_grid(tokens, (8, 8), grid=(4, 4))
    # tokens after the grid (YOLOS's detection tokens) are dropped: [class, 4 cells, 5 more]
    tokens = np.arange(10, dtype=np.float32).reshape(1, 10, 1)
    grid = _ops.tokens_to_grid(tokens, (4, 4), grid=(2, 2), prefix_tokens=1)
    np.testing.assert_array_equal(grid[0, 0], [[1, 2], [3, 4]])
    with pytest.raises(InputError, match="pass grid="):
        _ops.tokens_to_grid(np.zeros((1, 7, 3), np.float32), (100, 10))


def test_one_and_three_spatial_axes_by_hand():
    x = np.arange(12, dtype=np.float32).reshape(1, 2, 6)  # a signal: 2 channels, 6 samples
    np.testing.assert_allclose(_ops.spatial_mean(x), [[2.5, 8.5]])
    # 2 * [0..5] - [6..11] = [-6, -5, ..., -1]
    weighted = _ops.weighted_channel_sum(np.array([[2, -1]], np.float32), x)
    np.testing.assert_allclose(weighted, [[-6, -5, -4, -3, -2, -1]])
    np.testing.assert_allclose(_ops.normalize_minmax(weighted), [[0, 0.2, 0.4, 0.6, 0.8, 1]])
    volume = np.arange(16, dtype=np.float32).reshape(1, 2, 2, 2, 2)  # 2 channels of 2x2x2
    np.testing.assert_allclose(_ops.spatial_mean(volume), [[3.5, 11.5]])
    np.testing.assert_allclose(_ops.spatial_sum(volume)[..., 0, 0, 0], [[28, 92]])
    assert _ops.first_principal_projection(volume).shape == (1, 2, 2, 2)


@pytest.mark.parametrize(("shape", "size", "mode"), [
    ((2, 7), (13,), "linear"), ((2, 3, 4, 5), (6, 8, 3), "trilinear"),
])  # fmt: skip
def test_resize_of_signals_and_volumes_matches_torch_interpolate(shape, size, mode):
    torch = pytest.importorskip("torch")
    maps = rng.normal(size=shape).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(maps)[:, None], size=size, mode=mode, align_corners=False
    )[:, 0].numpy()
    np.testing.assert_allclose(_ops.resize_linear(maps, size), expected, atol=1e-5)


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
        "resize_linear": _ops.resize_linear(m, (11, 7)),
        "resize_linear_3d": _ops.resize_linear(x, (4, 3, 9)),
        "fuse": _ops.fuse([m, _ops.relu(m)], "product"),
        "tokens_to_grid": _ops.tokens_to_grid(tokens, (16, 16)),
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
