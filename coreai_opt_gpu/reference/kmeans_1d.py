"""Scalar k-means building blocks (numpy twins of the Triton kernels `lloyd_1d`, `assign_1d`).

Each block is a row of sorted values with weights (the sorted weights themselves, or a
histogram on a fixed grid). With prefix sums of w and w*x, one Lloyd iteration costs
O(K log M) per block: K-1 midpoints, a binary search per midpoint and K differences of prefix
sums. All blocks advance together, with no Python loop over blocks.

Exactness contract shared with the kernels: midpoints and centroid updates in float64,
values compared as float64 (`x <= mid` finds boundaries, `x > mid` counts codes).
"""

from __future__ import annotations

import numpy as np


def _ordered_keys(x: np.ndarray) -> np.ndarray:
    """float32 -> uint64 keys with the same order (-0.0 folded into +0.0)."""
    bits = (x.astype(np.float32) + np.float32(0.0)).view(np.uint32)
    flipped = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))
    return flipped.astype(np.uint64)


def round_down_to_float32(x: np.ndarray) -> np.ndarray:
    """Largest float32 <= x (float64): for float32 v, v <= x iff v <= round_down(x)."""
    down = x.astype(np.float32)
    return np.where(down.astype(np.float64) > x, np.nextafter(down, np.float32(-np.inf)), down)


class SortedRows:
    """Rows [G, M] of sorted float32, searchable per row with one flat np.searchsorted.

    Rows are concatenated under exact keys (row << 32 | order-preserving float bits), built
    once so that repeated searches cost O(log(G M)) each.
    """

    def __init__(self, rows: np.ndarray) -> None:
        self.shape = rows.shape
        self._offset = np.arange(rows.shape[0], dtype=np.uint64)[:, None] << np.uint64(32)
        self._flat = (self._offset | _ordered_keys(rows)).ravel()

    def search(self, values: np.ndarray, side: str = "left") -> np.ndarray:
        """values [G, Q] float32 -> per-row insertion points [G, Q] int64."""
        keys = (self._offset | _ordered_keys(values)).ravel()
        found = np.searchsorted(self._flat, keys, side=side).reshape(values.shape)
        return found.astype(np.int64) - np.arange(self.shape[0])[:, None] * self.shape[1]

    def count_at_most(self, bounds: np.ndarray) -> np.ndarray:
        """bounds [G, Q] float64 -> per row, how many values are <= each bound."""
        return self.search(round_down_to_float32(bounds), "right")


def batched_searchsorted(rows: np.ndarray, values: np.ndarray, side: str = "left") -> np.ndarray:
    """Per-row np.searchsorted: rows [G, M] sorted float32, values [G, Q] -> [G, Q] int64."""
    return SortedRows(rows).search(values, side)


def prefix_sums(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[G, M] -> prefix sums of w and w*x, each [G, M+1] float64 with a leading 0."""
    w = weights.astype(np.float64)
    zero = np.zeros((w.shape[0], 1))
    wx = w * values.astype(np.float64)
    return np.concatenate([zero, np.cumsum(w, 1)], 1), np.concatenate([zero, np.cumsum(wx, 1)], 1)


def midpoints(centroids: np.ndarray) -> np.ndarray:
    """[G, K] ascending float64 -> decision boundaries [G, K-1]."""
    return (centroids[:, :-1] + centroids[:, 1:]) * 0.5


def lloyd_1d(
    values: np.ndarray,
    prefix_w: np.ndarray,
    prefix_wx: np.ndarray,
    centroids: np.ndarray,
    max_iter: int,
) -> np.ndarray:
    """Lloyd iterations on sorted rows until no centroid moves (or max_iter).

    values [G, M] sorted float32; prefix_w, prefix_wx [G, M+1] float64; centroids [G, K]
    ascending float64 (the start). Boundaries: b_k = #{x <= (c_k-1 + c_k) / 2}; a cluster
    without weight keeps its centroid. Returns centroids [G, K] float64.
    """
    g, m = values.shape
    rows = SortedRows(values)
    centroids = centroids.astype(np.float64).copy()
    edges = np.zeros((g, 1), np.int64), np.full((g, 1), m, np.int64)
    for _ in range(max_iter):
        bounds = np.concatenate([edges[0], rows.count_at_most(midpoints(centroids)), edges[1]], 1)
        ends_w = np.take_along_axis(prefix_w, bounds, 1)
        ends_wx = np.take_along_axis(prefix_wx, bounds, 1)
        sw, swx = ends_w[:, 1:] - ends_w[:, :-1], ends_wx[:, 1:] - ends_wx[:, :-1]
        updated = np.where(sw > 0, swx / np.where(sw > 0, sw, 1.0), centroids)
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    return centroids


def assign_1d(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest-centroid codes: x [G, N] float32, centroids [G, K] ascending -> [G, N] uint8.

    code = #{k : x > (c_k + c_k+1) / 2}, compared in float64 (ties go to the lower code).
    """
    mids = midpoints(centroids.astype(np.float64))  # [G, K-1]
    if mids.shape[1] <= 16:
        x64 = x.astype(np.float64)
        codes = np.zeros(x.shape, np.uint8)
        for k in range(mids.shape[1]):
            codes += x64 > mids[:, k : k + 1]
        return codes
    # x > mid iff x > round_down_f32(mid) for float32 x: one flat search of sorted midpoints
    return SortedRows(round_down_to_float32(mids)).search(x, "left").astype(np.uint8)
