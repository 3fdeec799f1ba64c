"""Scalar (cluster_dim 1) k-means of many blocks at once.

1. Rows: each block becomes sorted values with weights. Exact mode sorts the block; fast mode
   (coreai_opt's semantics: fp16 cast, round to `rounding_precision` decimals) rounds first.
   On the CPU, fast mode counts each block on its 10^-p grid instead of sorting (one bincount
   over all blocks), compacted to the grid points that occur.
2. Starts: the exact k-means (dynamic programming) of the block coarsened to 16-32 bins per
   centroid, half equal-weight and half equal-width, which lands near the global optimum even
   on heavy tails (quantile starts stop 5-100% above it there); and weighted quantiles.
3. Lloyd on prefix sums from each start (`ops.lloyd_1d`: O(K log M) per iteration, run to
   convergence); the start with the lower inertia wins, per block.
4. Codes: nearest centroid per element (`ops.assign_1d`; a per-block table in CPU fast mode).

Rows on CUDA stay there (torch sort and scans, Triton Lloyd and assignment); only the coarse
bins [G, ~32K] visit the CPU for the dynamic program.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from coreai_opt_gpu import ops, reference
from coreai_opt_gpu.backend import Backend, choose_backend

FP16_MAX = 65504.0
GRID_BUDGET = 1 << 26  # largest G * grid span counted in CPU fast mode; beyond it, sort


@dataclass(frozen=True)
class GridCodes:
    """CPU fast mode: each element's position in the [G, width] grid, and each grid point's
    slot in the compacted rows (codes then come from one small table and one gather)."""

    positions: np.ndarray  # [G, N] int64, flat index into [G, width]
    slots: np.ndarray  # [G, width] int64, column in the compacted rows


@dataclass(frozen=True)
class ScalarRows:
    """Blocks as sorted rows: values [G, M] float32 ascending, weights [G, M] float64.

    `clustered` are the values the codes are computed from ([G, N], rounded in fast mode);
    `grid` replaces them in CPU fast mode.
    """

    values: torch.Tensor
    weights: torch.Tensor
    clustered: torch.Tensor | None = None
    grid: GridCodes | None = None


def fast_mode_codes(x: np.ndarray, rounding_precision: int) -> np.ndarray:
    """coreai_opt's fast mode as integer grid codes [G, N]: round(fp16(x) * 10^p), computed in
    float32 as upstream does (the clustered value of code q is float32(q) / 10^p)."""
    scaled = x.astype(np.float16).astype(np.float32) * np.float32(10.0**rounding_precision)
    return np.rint(scaled).astype(np.int64)


def fast_mode_values(x: torch.Tensor, rounding_precision: int) -> torch.Tensor:
    """The same rounding on a tensor: float32(round(fp16(x) * 10^p)) / 10^p."""
    scale = float(np.float32(10.0**rounding_precision))
    return torch.round(x.to(torch.float16).to(torch.float32) * scale) / scale


def grid_rows(codes: np.ndarray, weights: np.ndarray | None, rounding_precision: int) -> ScalarRows:
    """Per-block weighted histogram of integer grid codes [G, N], compacted to the occupied
    grid points: rows [G, U] (U = most distinct codes in a block, the rest weight 0)."""
    g = codes.shape[0]
    low, high = codes.min(1), codes.max(1)
    width = int((high - low).max()) + 1
    scale = np.float32(10.0**rounding_precision)
    flat = codes + (np.arange(g) * width - low)[:, None]  # [G, N]: position in [G, width]
    counts = np.bincount(flat.ravel(), minlength=g * width).reshape(g, width)
    occupied = counts > 0
    slot = np.cumsum(occupied, axis=1) - 1  # [G, width]: compact slot of each grid point
    distinct = int(slot[:, -1].max()) + 1
    where_g, where_code = np.nonzero(occupied)
    where_slot = slot[where_g, where_code]
    grid = np.empty((g, distinct), np.float32)
    grid[:] = (high.astype(np.float32) / scale)[:, None]  # padding: the row's maximum
    grid[where_g, where_slot] = (low[where_g] + where_code).astype(np.float32) / scale
    sums = counts if weights is None else np.bincount(flat.ravel(), weights.ravel(), g * width)
    hist = np.zeros((g, distinct))
    hist[where_g, where_slot] = sums.reshape(g, width)[where_g, where_code]
    values, hist = torch.from_numpy(grid), torch.from_numpy(hist)
    return ScalarRows(values, hist, grid=GridCodes(flat, slot))


def sorted_rows(x: torch.Tensor, weights: torch.Tensor | None) -> ScalarRows:
    """Each block sorted, with its weights carried along (numpy sort on the CPU)."""
    if weights is None and not x.is_cuda:
        values = torch.from_numpy(np.sort(x.numpy(), axis=1))
        return ScalarRows(values, torch.ones(x.shape, dtype=torch.float64), clustered=x)
    values, order = torch.sort(x, dim=1, stable=True)
    sorted_weights = (
        torch.ones_like(x, dtype=torch.float64)
        if weights is None
        else torch.gather(weights.double(), 1, order)
    )
    return ScalarRows(values, sorted_weights, clustered=x)


def prefix_sums(rows: ScalarRows) -> tuple[torch.Tensor, torch.Tensor]:
    """[G, M] rows -> prefix sums of w and w*x, each [G, M+1] float64 with a leading 0."""
    w = rows.weights
    zero = torch.zeros((w.shape[0], 1), dtype=torch.float64, device=w.device)
    wx = w * rows.values.double()
    return torch.cat([zero, w.cumsum(1)], 1), torch.cat([zero, wx.cumsum(1)], 1)


def quantile_start(rows: ScalarRows, prefix_w: torch.Tensor, k: int) -> torch.Tensor:
    """Values at the (j + 0.5) / K weighted quantiles of each block -> [G, K] float64."""
    cdf = prefix_w[:, 1:] / prefix_w[:, -1:].clamp_min(1e-300)
    targets = ((torch.arange(k, device=cdf.device) + 0.5) / k).double().expand(len(cdf), k)
    index = torch.searchsorted(cdf, targets.contiguous()).clamp_max(cdf.shape[1] - 1)
    return torch.gather(rows.values, 1, index).double()


def coarse_edges(rows: ScalarRows, prefix_w: torch.Tensor, bins: int, exact: bool) -> torch.Tensor:
    """Bin edges [G, bins + 1] into the sorted rows: half equal-weight cuts (resolution where
    the mass is), half equal-width cuts (resolution in the tails, where outliers want a
    centroid of their own). `exact`: every value is its own bin (decided from the block length,
    never from the padded row width, so a block's start does not depend on its batch)."""
    g, m = rows.values.shape
    device = rows.values.device
    if exact:
        return torch.arange(m + 1, device=device).expand(g, m + 1)
    half = bins // 2
    cdf = prefix_w[:, 1:] / prefix_w[:, -1:].clamp_min(1e-300)
    cuts = (torch.arange(1, half, device=device) / half).double().expand(g, half - 1)
    by_weight = torch.searchsorted(cdf, cuts.contiguous(), right=True) + 1
    low, high = rows.values[:, :1].double(), rows.values[:, -1:].double()
    steps = torch.arange(1, bins - half + 1, device=device).double() / (bins - half + 1)
    levels = (low + (high - low) * steps).contiguous()
    by_width = torch.searchsorted(rows.values.double().contiguous(), levels, right=True)
    ends = (
        torch.zeros((g, 1), dtype=torch.int64, device=device),
        torch.full((g, 1), m, dtype=torch.int64, device=device),
    )
    edges = torch.cat([ends[0], by_weight.clamp_max(m), by_width, ends[1]], 1)
    return edges.sort(dim=1).values


def coarse_start(
    rows: ScalarRows,
    prefix_w: torch.Tensor,
    prefix_wx: torch.Tensor,
    k: int,
    bins: int,
    exact: bool,
) -> torch.Tensor:
    """Exact k-means of each block coarsened to `bins` runs (`coarse_edges`) -> [G, K] f64."""
    m = rows.values.shape[1]
    edges = coarse_edges(rows, prefix_w, bins, exact)
    bin_w = torch.gather(prefix_w, 1, edges).diff(dim=1)
    bin_wx = torch.gather(prefix_wx, 1, edges).diff(dim=1)
    first = torch.gather(rows.values, 1, edges[:, :-1].clamp_max(m - 1)).double()
    mean = torch.where(bin_w > 0, bin_wx / bin_w.clamp_min(1e-300), first).cummax(dim=1).values
    centroids, _ = reference.kmeans_1d_exact(mean.cpu().numpy(), bin_w.cpu().numpy(), k)
    return torch.from_numpy(centroids).to(rows.values.device)


def coarse_bins(k: int, width: int) -> int:
    """Bins of the DP start, every value when the row is shorter. Measured after Lloyd on
    Student-t(4) blocks: 16 bins per centroid are within 0.1% of the optimum up to 4 bits
    (a 4096x4096 layer at 4 bits, group 16: 0.67 s vs 1.06 s with 32); 6-8 bits need 32."""
    return min(width, max(256, (16 if k <= 16 else 32) * k))


def inertia(rows: ScalarRows, centroids: torch.Tensor) -> torch.Tensor:
    """Weighted squared error of each block around its nearest centroids -> [G] float64."""
    codes = ops.assign_1d(rows.values, centroids).long()
    nearest = torch.gather(centroids.double(), 1, codes)
    return (rows.weights * (rows.values.double() - nearest) ** 2).sum(1)


def build_rows(
    x: torch.Tensor, weights: torch.Tensor | None, rounding_precision: int | None
) -> ScalarRows:
    """Sorted rows of the blocks; CPU fast mode uses grid histograms when they fit."""
    if rounding_precision is None:
        return sorted_rows(x, weights)
    if choose_backend(x) == Backend.NUMPY and x.device.type == "cpu":
        codes = fast_mode_codes(x.numpy(), rounding_precision)
        span = int((codes.max(1) - codes.min(1)).max()) + 1
        if span * x.shape[0] <= GRID_BUDGET:
            w = None if weights is None else weights.cpu().numpy()
            return grid_rows(codes, w, rounding_precision)
    return sorted_rows(fast_mode_values(x, rounding_precision), weights)


def cluster_scalar(
    x: torch.Tensor,
    k: int,
    weights: torch.Tensor | None = None,
    rounding_precision: int | None = None,
    max_iter: int = 300,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k-means of every row of x [G, N] float32 (fast mode when rounding_precision is set).

    Returns LUT [G, K] float32 ascending, codes [G, N] uint8 and inertia [G] float64 (on the
    clustered values: the rounded ones in fast mode), on x's device.
    """
    if rounding_precision is not None:
        in_fp16 = x.abs().amax(1) <= FP16_MAX
        if not bool(in_fp16.all()):  # upstream clusters such blocks on their exact values
            return _split_rows(in_fp16, x, k, weights, rounding_precision, max_iter)
    rows = build_rows(x, weights, rounding_precision)
    prefix_w, prefix_wx = prefix_sums(rows)
    bins = coarse_bins(k, x.shape[1])  # from the block length: the same for every batch
    exact = bins >= x.shape[1]
    starts = [
        coarse_start(rows, prefix_w, prefix_wx, k, bins, exact),
        quantile_start(rows, prefix_w, k),
    ]
    best, best_inertia = None, None
    for start in starts:
        centroids = ops.lloyd_1d(rows.values, prefix_w, prefix_wx, start, max_iter)
        cost = inertia(rows, centroids)
        if best is None:
            best, best_inertia = centroids, cost
        else:
            better = cost < best_inertia
            best = torch.where(better[:, None], centroids, best)
            best_inertia = torch.minimum(cost, best_inertia)

    lut = best.sort(dim=1).values.float()
    if rows.grid is not None:
        table = ops.assign_1d(rows.values, lut).numpy()  # [G, U]: code of each grid point
        table = np.take_along_axis(table, rows.grid.slots, 1)  # [G, width]
        codes = torch.from_numpy(np.take(table.ravel(), rows.grid.positions))
    else:
        codes = ops.assign_1d(rows.clustered, lut)
    return lut, codes, best_inertia


def _split_rows(
    fast: torch.Tensor,
    x: torch.Tensor,
    k: int,
    weights: torch.Tensor | None,
    rounding_precision: int,
    max_iter: int,
):
    """Cluster rows where `fast` in fast mode and the others on exact values; merge."""
    lut = torch.empty((x.shape[0], k), dtype=torch.float32, device=x.device)
    codes = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    cost = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for rows, precision in ((fast, rounding_precision), (~fast, None)):
        if bool(rows.any()):
            part = cluster_scalar(
                x[rows], k, None if weights is None else weights[rows], precision, max_iter
            )
            lut[rows], codes[rows], cost[rows] = part
    return lut, codes, cost
