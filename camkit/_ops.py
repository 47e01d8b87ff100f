"""Pure array math shared by every method, written against the Array API standard.

Each function takes arrays of one namespace (numpy, torch on CPU or CUDA, JAX, ...) and returns
arrays of the same namespace on the same device, never mutating its inputs. numpy is the
reference; the test-suite runs the same functions on ``array-api-strict`` to catch calls that lie
outside the standard.

Shape conventions: ``N`` samples, ``C`` channels, ``*S`` a feature map's spatial axes (one for
signals ``(L,)``, two for images ``(H, W)``, three for volumes and video ``(D, H, W)``), ``T``
tokens of a transformer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
    "resize_linear",
    "resize_nearest",
    "spatial_axes",
    "spatial_mean",
    "spatial_sum",
    "token_grid",
    "tokens_to_grid",
    "weighted_channel_sum",
]

Array = Any
Fusion = Literal["mean", "max", "product"]


def spatial_axes(x: Array) -> tuple[int, ...]:
    """The spatial axes of ``(N, C, *S)``: ``(2, ..., ndim - 1)``."""
    return tuple(range(2, x.ndim))


def spatial_sum(x: Array) -> Array:
    """``(N, C, *S) -> (N, C, 1, ...)``: the sum over the spatial axes, kept for broadcasting."""
    xp = array_namespace(x)
    return xp.sum(x, axis=spatial_axes(x), keepdims=True)


def spatial_mean(x: Array) -> Array:
    """``(N, C, *S) -> (N, C)``: global average pooling, ``(1 / |S|) * sum_s x[n, c, s]``."""
    xp = array_namespace(x)
    return xp.mean(x, axis=spatial_axes(x))


def weighted_channel_sum(weights: Array, activations: Array) -> Array:
    """``(N, C), (N, C, *S) -> (N, *S)``: ``M[n] = sum_c weights[n, c] * activations[n, c]``."""
    xp = array_namespace(weights, activations)
    expanded = xp.reshape(weights, (*weights.shape, *([1] * (activations.ndim - 2))))
    return xp.sum(expanded * activations, axis=1)


def relu(x: Array) -> Array:
    """Elementwise ``max(x, 0)``."""
    xp = array_namespace(x)
    return xp.where(x > 0, x, xp.zeros_like(x))


def normalize_minmax(maps: Array) -> Array:
    """``(N, *S) -> (N, *S)``: rescale each map to ``[0, 1]`` by its own min and max.

    ``(M - min M) / (max M - min M)``. A constant map (an all-zero one included) has no contrast
    to show and becomes all zeros, never NaN.
    """
    xp = array_namespace(maps)
    axes = tuple(range(1, maps.ndim))
    low = xp.min(maps, axis=axes, keepdims=True)
    high = xp.max(maps, axis=axes, keepdims=True)
    span = high - low
    has_span = span > 0
    scaled = (maps - low) / xp.where(has_span, span, xp.ones_like(span))
    return xp.where(has_span, scaled, xp.zeros_like(maps))


@lru_cache(maxsize=64)
def _interpolation_matrix(size_out: int, size_in: int, align_corners: bool = False) -> np.ndarray:
    """``(size_out, size_in)`` float32 matrix of 1-D linear interpolation weights.

    Half-pixel centres (``src = (dst + 0.5) * size_in / size_out - 0.5``) clamped to the edges,
    the convention of ``cv2.resize(INTER_LINEAR)`` and ``torch.nn.functional.interpolate(
    mode="bilinear", align_corners=False)`` (neither antialiased); with ``align_corners``, the
    first and last pixels' centres meet (``src = dst * (size_in - 1) / (size_out - 1)``), as in
    ``torch.nn.UpsamplingBilinear2d`` and ``align_corners=True``.
    """
    if align_corners:
        scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
        source = np.arange(size_out) * scale
    else:
        source = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    source = np.clip(source, 0.0, size_in - 1)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, size_in - 1)
    frac = source - lower
    matrix = np.zeros((size_out, size_in), dtype=np.float64)
    rows = np.arange(size_out)
    np.add.at(matrix, (rows, lower), 1.0 - frac)
    np.add.at(matrix, (rows, upper), frac)
    return matrix.astype(np.float32)


def _along(x: Array, axis: int, matrix: np.ndarray) -> Array:
    """``matrix`` ``(out, in)`` applied along ``axis`` of ``x``, moved to ``x``'s device."""
    xp = array_namespace(x)
    operator = xp.asarray(matrix, dtype=x.dtype, device=device(x))
    axis = axis % x.ndim
    if axis == x.ndim - 2:  # images' rows: one matrix product, no transposition
        return xp.matmul(operator, x)
    if axis == x.ndim - 1:
        return xp.matmul(x, xp.matrix_transpose(operator))
    order = (*[a for a in range(x.ndim) if a != axis], axis)
    back = tuple(order.index(a) for a in range(x.ndim))
    moved = xp.matmul(xp.permute_dims(x, order), xp.matrix_transpose(operator))
    return xp.permute_dims(moved, back)


def _separable(x: Array, matrices: Sequence[np.ndarray | None]) -> Array:
    """``x`` with one matrix applied along each of its trailing axes (``None``: unchanged)."""
    first = x.ndim - len(matrices)
    for offset, matrix in enumerate(matrices):
        if matrix is not None:
            x = _along(x, first + offset, matrix)
    return x


def resize_linear(maps: Array, size: Sequence[int], *, align_corners: bool = False) -> Array:
    """``(..., *s) -> (..., *size)``: separable linear resize of the trailing ``len(size)`` axes
    (bilinear for images, trilinear for volumes), one matrix product per axis, ``R @ M``;
    half-pixel centres unless ``align_corners`` (see :func:`_interpolation_matrix`).

    The interpolation matrices are built once per shape on the host and moved to the maps'
    device, so the resize needs nothing beyond ``matmul`` and runs in every namespace.
    """
    return _resized(maps, size, lambda out, inp: _interpolation_matrix(out, inp, align_corners))


@lru_cache(maxsize=64)
def _nearest_matrix(size_out: int, size_in: int) -> np.ndarray:
    """``(size_out, size_in)`` float32 0/1 matrix taking output pixel ``dst`` from input pixel
    ``floor(dst * size_in / size_out)``, the convention of ``torch.nn.functional.interpolate(
    mode="nearest")``."""
    source = np.minimum(np.floor(np.arange(size_out) * (size_in / size_out)), size_in - 1)
    matrix = np.zeros((size_out, size_in), dtype=np.float32)
    matrix[np.arange(size_out), source.astype(np.int64)] = 1.0
    return matrix


def resize_nearest(maps: Array, size: Sequence[int]) -> Array:
    """``(..., *s) -> (..., *size)``: nearest-neighbour resize of the trailing ``len(size)``
    axes, each output pixel a copy of one input pixel (see :func:`_nearest_matrix`)."""
    return _resized(maps, size, _nearest_matrix)


def _resized(maps: Array, size: Sequence[int], matrix: Callable[[int, int], np.ndarray]) -> Array:
    """``maps`` with ``matrix(out, in)`` applied along each trailing axis whose size changes."""
    target = tuple(int(s) for s in size)
    current = tuple(int(s) for s in maps.shape[maps.ndim - len(target) :])
    if target == current:
        return maps
    return _separable(
        maps,
        [None if out == inp else matrix(out, inp)
         for out, inp in zip(target, current, strict=True)],
    )  # fmt: skip


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
    """``(N, C, *S) -> (N, C, *S)``: a separable Gaussian blur of standard deviation ``sigma``
    pixels along every spatial axis (the blurred baseline of the insertion metric)."""
    if sigma <= 0:
        return images
    return _separable(images, [_gaussian_matrix(int(n), float(sigma)) for n in images.shape[2:]])


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


#: The most leading tokens (class, distillation, registers) a token layer is searched for.
MAX_PREFIX_TOKENS = 16
#: How far the strides a map implies along an image's two axes may differ (padding).
STRIDE_TOLERANCE = 1.2


def _factorizations(count: int, rank: int) -> list[tuple[int, ...]]:
    """Every way to write ``count`` as a product of ``rank`` positive integers, in order."""
    if rank == 1:
        return [(count,)]
    found = []
    for first in range(1, count + 1):
        if count % first == 0:
            found += [(first, *rest) for rest in _factorizations(count // first, rank - 1)]
    return found


def _grid_for(patches: int, input_size: Sequence[int], exact: bool) -> tuple[int, ...] | None:
    """The grid of ``patches`` tokens over an input of ``input_size``: the factorization whose
    strides ``input_size[i] / grid[i]`` agree best, if they agree within the tolerance (or, if
    ``exact``, are one and the same whole number)."""
    best, spread = None, STRIDE_TOLERANCE
    for grid in _factorizations(patches, len(input_size)):
        strides = [size / cells for size, cells in zip(input_size, grid, strict=True)]
        ratio = max(strides) / min(strides)
        whole = all(size % cells == 0 for size, cells in zip(input_size, grid, strict=True))
        if exact and (ratio != 1 or not whole):
            continue
        if min(strides) >= 1 and ratio <= spread:
            best, spread = grid, ratio
    return best


def token_grid(
    count: int,
    input_size: Sequence[int],
    grid: Sequence[int] | None = None,
    prefix_tokens: int | None = None,
) -> tuple[int, tuple[int, ...]]:
    """``(prefix, grid)``: how ``count`` tokens lay out over an input of ``input_size``.

    ``grid`` and ``prefix_tokens`` as given where they are (both given, tokens after the grid's
    cells are dropped too: YOLOS's detection tokens); otherwise the fewest leading tokens
    (up to :data:`MAX_PREFIX_TOKENS`: class, distillation, register tokens) whose removal leaves
    a grid of the input's shape, ``grid[i] = input_size[i] / stride`` for one whole-number
    stride (ViT patches; a Swin stage, whose stride grows with depth; non-square inputs), or
    failing that ``grid[i] ~ input_size[i] / stride`` within 20% (inputs padded to a multiple
    of the stride).
    """
    if grid is not None:
        cells = math.prod(grid)
        prefix = count - cells if prefix_tokens is None else prefix_tokens
        if prefix < 0 or prefix + cells > count:
            dropped = "" if prefix_tokens is None else f" after dropping prefix_tokens={prefix}"
            raise InputError(
                f"cannot lay {count} tokens out as grid={tuple(grid)} ({cells} cells){dropped}; "
                f"pass grid= and prefix_tokens= so that prefix_tokens + the grid's cells "
                f"<= {count}"
            )
        return prefix, tuple(int(g) for g in grid)
    prefixes = (
        range(min(count, MAX_PREFIX_TOKENS + 1)) if prefix_tokens is None else [prefix_tokens]
    )
    for exact in (True, False):  # a whole-number patch size first; then padded inputs (Swin)
        for prefix in prefixes:
            found = _grid_for(count - prefix, input_size, exact) if count > prefix else None
            if found is not None:
                return prefix, found
    raise InputError(
        f"cannot lay {count} tokens out as a grid over inputs of spatial size "
        f"{tuple(input_size)} (after dropping up to {MAX_PREFIX_TOKENS} leading tokens); pass "
        "grid=(h, w) and prefix_tokens= for this layer"
    )


def tokens_to_grid(
    tokens: Array,
    input_size: Sequence[int],
    grid: Sequence[int] | None = None,
    prefix_tokens: int | None = None,
) -> Array:
    """``(N, T, C) -> (N, C, *grid)``: a transformer's tokens as a channels-first map.

    The first ``prefix`` tokens (class, registers) are dropped and the next are laid out row by
    row on the grid that :func:`token_grid` finds for the input's spatial size (any after them
    dropped).
    """
    xp = array_namespace(tokens)
    prefix, shape = token_grid(tokens.shape[1], input_size, grid, prefix_tokens)
    cells = tokens[:, prefix : prefix + math.prod(shape), :]
    grid_tokens = xp.reshape(cells, (tokens.shape[0], *shape, tokens.shape[2]))
    return xp.permute_dims(grid_tokens, (0, grid_tokens.ndim - 1, *range(1, grid_tokens.ndim - 1)))


def first_principal_projection(x: Array, *, centered: bool = False) -> Array:
    """``(N, C, *S) -> (N, *S)``: each sample projected on its first principal direction.

    With ``X[n]`` the ``(|S|, C)`` matrix of the sample's channel vectors and
    ``X[n] = U S V^T`` its singular value decomposition, the map is ``X[n] @ v_1`` reshaped to
    ``S``, as in Eigen-CAM (Muhammad & Yeasin, 2020), which takes no mean-centring. A
    singular vector's sign is arbitrary, so the sign is fixed to make the map's sum
    non-negative: the map then points the same way as the activations it summarizes.

    ``centered`` first subtracts each channel's mean over the positions,
    ``X[n] - mean_p X[n][p]``, and projects that (pytorch-grad-cam's reading). A centred
    projection sums to zero, so its sign is fixed instead to correlate non-negatively with the
    channel sum ``sum_c X[n][:, c]``: high where the activations are.
    """
    xp = array_namespace(x)
    n, c, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
    matrix = xp.permute_dims(xp.reshape(x, (n, c, math.prod(spatial))), (0, 2, 1))
    reference = xp.ones_like(matrix[:, :, 0])
    if centered:
        reference = xp.sum(matrix, axis=2)
        reference = reference - xp.mean(reference, axis=1, keepdims=True)
        matrix = matrix - xp.mean(matrix, axis=1, keepdims=True)
    _, _, v_transposed = xp.linalg.svd(matrix, full_matrices=False)
    direction = v_transposed[:, 0, :]
    projection = xp.matmul(matrix, direction[:, :, None])[:, :, 0]
    agreement = xp.sum(projection * reference, axis=1, keepdims=True)
    sign = xp.where(agreement < 0, -xp.ones_like(agreement), xp.ones_like(agreement))
    return xp.reshape(projection * sign, (n, *spatial))
