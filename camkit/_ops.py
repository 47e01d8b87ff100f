"""Pure array math shared by every method, written against the Array API standard.

Each function takes arrays of one namespace (numpy, torch on CPU or CUDA, JAX, ...) and returns
arrays of the same namespace on the same device, never mutating its inputs. numpy is the
reference; the test-suite runs the same functions on ``array-api-strict`` to catch calls that lie
outside the standard.

Shape conventions: ``N`` samples, ``C`` channels, ``H, W`` a feature map's spatial size,
``T`` tokens of a vision transformer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from array_api_compat import array_namespace, device

from ._errors import InputError

__all__ = [
    "Fusion",
    "blur_gaussian",
    "first_principal_projection",
    "fuse",
    "normalize_minmax",
    "relu",
    "resize_bilinear",
    "spatial_mean",
    "spatial_sum",
    "tokens_to_grid",
    "weighted_channel_sum",
]

Array = Any
Fusion = Literal["mean", "max", "product"]


def spatial_sum(x: Array) -> Array:
    """``(N, C, H, W) -> (N, C, 1, 1)``: the sum over the spatial axes, kept for broadcasting."""
    xp = array_namespace(x)
    return xp.sum(x, axis=(2, 3), keepdims=True)


def spatial_mean(x: Array) -> Array:
    """``(N, C, H, W) -> (N, C)``: global average pooling, ``(1 / HW) * sum_ij x[n, c, i, j]``."""
    xp = array_namespace(x)
    return xp.mean(x, axis=(2, 3))


def weighted_channel_sum(weights: Array, activations: Array) -> Array:
    """``(N, C), (N, C, H, W) -> (N, H, W)``: ``M[n] = sum_c weights[n, c] * activations[n, c]``."""
    xp = array_namespace(weights, activations)
    return xp.sum(weights[:, :, None, None] * activations, axis=1)


def relu(x: Array) -> Array:
    """Elementwise ``max(x, 0)``."""
    xp = array_namespace(x)
    return xp.where(x > 0, x, xp.zeros_like(x))


def normalize_minmax(maps: Array) -> Array:
    """``(N, H, W) -> (N, H, W)``: rescale each map to ``[0, 1]`` by its own min and max.

    ``(M - min M) / (max M - min M)``. A constant map (an all-zero one included) has no contrast
    to show and becomes all zeros, never NaN.
    """
    xp = array_namespace(maps)
    low = xp.min(maps, axis=(1, 2), keepdims=True)
    high = xp.max(maps, axis=(1, 2), keepdims=True)
    span = high - low
    has_span = span > 0
    scaled = (maps - low) / xp.where(has_span, span, xp.ones_like(span))
    return xp.where(has_span, scaled, xp.zeros_like(maps))


@lru_cache(maxsize=64)
def _interpolation_matrix(size_out: int, size_in: int) -> np.ndarray:
    """``(size_out, size_in)`` float32 matrix of 1-D linear interpolation weights.

    Half-pixel centres (``src = (dst + 0.5) * size_in / size_out - 0.5``) clamped to the edges,
    the convention of ``cv2.resize(INTER_LINEAR)`` and ``torch.nn.functional.interpolate(
    mode="bilinear", align_corners=False)`` (neither antialiased).
    """
    scale = size_in / size_out
    source = np.clip((np.arange(size_out) + 0.5) * scale - 0.5, 0.0, size_in - 1)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, size_in - 1)
    frac = source - lower
    matrix = np.zeros((size_out, size_in), dtype=np.float64)
    rows = np.arange(size_out)
    np.add.at(matrix, (rows, lower), 1.0 - frac)
    np.add.at(matrix, (rows, upper), frac)
    return matrix.astype(np.float32)


def _separable(x: Array, rows: np.ndarray, cols: np.ndarray) -> Array:
    """``R @ x @ C^T`` over the last two axes, the host matrices moved to ``x``'s device."""
    xp = array_namespace(x)
    where = device(x)
    left = xp.asarray(rows, dtype=x.dtype, device=where)
    right = xp.asarray(cols, dtype=x.dtype, device=where)
    return xp.matmul(xp.matmul(left, x), xp.matrix_transpose(right))


def resize_bilinear(maps: Array, size: tuple[int, int]) -> Array:
    """``(..., h, w) -> (..., H, W)``: bilinear resize as two matrix products, ``R_h @ M @ R_w^T``.

    The interpolation matrices are built once per shape on the host and moved to the maps'
    device, so the resize needs nothing beyond ``matmul`` and runs in every namespace.
    """
    height, width = (int(s) for s in size)
    if (height, width) == tuple(maps.shape[-2:]):
        return maps
    rows = _interpolation_matrix(height, maps.shape[-2])
    return _separable(maps, rows, _interpolation_matrix(width, maps.shape[-1]))


@lru_cache(maxsize=16)
def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """``(size, size)`` float32 matrix of a 1-D Gaussian blur truncated at ``3 sigma``.

    Each row is renormalized to sum to 1, so pixels near the border average the pixels that
    exist instead of an imagined padding.
    """
    offsets = np.arange(size)[None, :] - np.arange(size)[:, None]
    weights = np.exp(-0.5 * (offsets / sigma) ** 2) * (np.abs(offsets) <= 3 * sigma)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def blur_gaussian(images: Array, sigma: float) -> Array:
    """``(..., H, W) -> (..., H, W)``: a separable Gaussian blur of standard deviation ``sigma``
    pixels, ``G_H @ X @ G_W^T`` (the blurred baseline of the insertion metric)."""
    if sigma <= 0:
        return images
    height, width = images.shape[-2:]
    rows = _gaussian_matrix(int(height), float(sigma))
    return _separable(images, rows, _gaussian_matrix(int(width), float(sigma)))


def fuse(maps: Sequence[Array], how: Fusion) -> Array:
    """Combine ``L`` maps of one shape ``(N, H, W)`` into one: their mean, maximum or product."""
    if len(maps) == 1:
        return maps[0]
    xp = array_namespace(*maps)
    stacked = xp.stack(list(maps), axis=0)
    if how == "mean":
        return xp.mean(stacked, axis=0)
    if how == "max":
        return xp.max(stacked, axis=0)
    if how == "product":
        return xp.prod(stacked, axis=0)
    raise InputError(f"fusion={how!r} is not a fusion mode; use 'mean', 'max' or 'product'")


def _infer_prefix_tokens(tokens: int) -> int:
    """The fewest leading tokens to drop so that the rest form a square grid."""
    for prefix in range(tokens):
        side = math.isqrt(tokens - prefix)
        if side * side == tokens - prefix:
            return prefix
    return 0  # unreachable: one token is a 1x1 grid


def tokens_to_grid(
    tokens: Array, grid: tuple[int, int] | None = None, prefix_tokens: int | None = None
) -> Array:
    """``(N, T, C) -> (N, C, h, w)``: a vision transformer's tokens as a channels-first map.

    The first ``prefix_tokens`` tokens (class token, register tokens) are dropped and the
    remaining ``h * w`` patch tokens are laid out row by row. Without ``grid`` the patch tokens
    must form a square; without ``prefix_tokens`` it is the fewest leading tokens whose removal
    leaves ``h * w`` (with ``grid``) or a square number of tokens.
    """
    xp = array_namespace(tokens)
    count = tokens.shape[1]
    if prefix_tokens is None:
        prefix_tokens = count - grid[0] * grid[1] if grid else _infer_prefix_tokens(count)
    patches = count - prefix_tokens
    if grid is None:
        side = math.isqrt(patches)
        grid = (side, side)
    height, width = grid
    if prefix_tokens < 0 or height * width != patches:
        raise InputError(
            f"cannot lay {count} tokens out as grid={grid} after dropping "
            f"prefix_tokens={prefix_tokens}; pass grid=(h, w) and prefix_tokens= so that "
            f"prefix_tokens + h * w == {count}"
        )
    grid_tokens = xp.reshape(tokens[:, prefix_tokens:, :], (tokens.shape[0], height, width, -1))
    return xp.permute_dims(grid_tokens, (0, 3, 1, 2))


def first_principal_projection(x: Array) -> Array:
    """``(N, C, H, W) -> (N, H, W)``: each sample projected on its first principal direction.

    With ``X[n]`` the ``(HW, C)`` matrix of the sample's channel vectors and
    ``X[n] = U S V^T`` its singular value decomposition, the map is ``X[n] @ v_1`` reshaped to
    ``(H, W)``, as in Eigen-CAM (Muhammad & Yeasin, 2020), which takes no mean-centring. A
    singular vector's sign is arbitrary, so the sign is fixed to make the map's sum
    non-negative: the map then points the same way as the activations it summarizes.
    """
    xp = array_namespace(x)
    n, c, h, w = x.shape
    matrix = xp.permute_dims(xp.reshape(x, (n, c, h * w)), (0, 2, 1))
    _, _, v_transposed = xp.linalg.svd(matrix, full_matrices=False)
    direction = v_transposed[:, 0, :]
    projection = xp.matmul(matrix, direction[:, :, None])[:, :, 0]
    total = xp.sum(projection, axis=1, keepdims=True)
    sign = xp.where(total < 0, -xp.ones_like(total), xp.ones_like(total))
    return xp.reshape(projection * sign, (n, h, w))
