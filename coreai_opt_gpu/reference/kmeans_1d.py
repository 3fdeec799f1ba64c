"""Batched scalar k-means on sorted blocks (numpy): the CPU path of the scalar engine.

Each block is sorted once; prefix sums of w and w*x make one Lloyd iteration cost
O(K log N) per block: K-1 midpoints, a binary search per midpoint, K differences of prefix
sums. All blocks advance together, with no Python loop over blocks.
"""

from __future__ import annotations

import numpy as np


def _ordered_keys(x: np.ndarray) -> np.ndarray:
    """float32 -> uint64 keys with the same order (-0.0 folded into +0.0)."""
    bits = (x.astype(np.float32) + np.float32(0.0)).view(np.uint32)
    flipped = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))
    return flipped.astype(np.uint64)


class SortedRows:
    """Rows [G, N] of sorted float32, searchable per row with one flat np.searchsorted.

    Rows are concatenated under exact keys (row << 32 | order-preserving float bits), built
    once so that repeated searches cost O(M log(G N)).
    """

    def __init__(self, rows: np.ndarray) -> None:
        self.shape = rows.shape
        self._offset = np.arange(rows.shape[0], dtype=np.uint64)[:, None] << np.uint64(32)
        self._flat = (self._offset | _ordered_keys(rows)).ravel()

    def search(self, values: np.ndarray, side: str = "left") -> np.ndarray:
        """values [G, M] float32 -> per-row insertion points [G, M] int64."""
        g, n = self.shape
        found = np.searchsorted(self._flat, (self._offset | _ordered_keys(values)).ravel(), side)
        return found.reshape(values.shape).astype(np.int64) - np.arange(g)[:, None] * n


def batched_searchsorted(rows: np.ndarray, values: np.ndarray, side: str = "left") -> np.ndarray:
    """Per-row np.searchsorted: rows [G, N] sorted float32, values [G, M] -> [G, M] int64."""
    return SortedRows(rows).search(values, side)


def _segment_sums(prefix: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """prefix [G, N+1], bounds [G, K+1] -> sums over each [bounds_k, bounds_k+1) [G, K]."""
    ends = np.take_along_axis(prefix, bounds, axis=1)
    return ends[:, 1:] - ends[:, :-1]


def kmeans_1d(
    x: np.ndarray, k: int, weights: np.ndarray | None = None, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted Lloyd k-means of every row of x [G, N] (float32), started from quantiles.

    Returns centroids [G, K] float32 (ascending), indices [G, N] uint8 (nearest centroid) and
    inertia [G] float64 (sum of w * (x - c)^2).
    """
    g, n = x.shape
    x = x.astype(np.float32)
    w = np.ones_like(x, dtype=np.float64) if weights is None else weights.astype(np.float64)
    order = np.argsort(x, axis=1, kind="stable")
    xs, ws = np.take_along_axis(x, order, 1), np.take_along_axis(w, order, 1)
    zero = np.zeros((g, 1))
    pw = np.concatenate([zero, np.cumsum(ws, axis=1)], axis=1)  # [G, N+1]
    pwx = np.concatenate([zero, np.cumsum(ws * xs, axis=1)], axis=1)  # [G, N+1]

    # start: weighted quantiles at (k + 0.5) / K of each block's total weight
    cdf = (pw[:, 1:] / np.maximum(pw[:, -1:], 1e-300)).astype(np.float32)  # [G, N]
    targets = np.broadcast_to(((np.arange(k) + 0.5) / k).astype(np.float32), (g, k))
    start = np.minimum(batched_searchsorted(cdf, np.ascontiguousarray(targets)), n - 1)
    centroids = np.take_along_axis(xs, start, 1).astype(np.float64)  # [G, K]

    sorted_rows = SortedRows(xs)
    edges = (np.zeros((g, 1), np.int64), np.full((g, 1), n, np.int64))
    for _ in range(max_iter):
        mids = ((centroids[:, :-1] + centroids[:, 1:]) / 2).astype(np.float32)  # [G, K-1]
        bounds = np.concatenate([edges[0], sorted_rows.search(mids, "right"), edges[1]], 1)
        sw, swx = _segment_sums(pw, bounds), _segment_sums(pwx, bounds)
        updated = np.where(sw > 0, swx / np.where(sw > 0, sw, 1), centroids)
        if np.array_equal(updated, centroids):
            break
        centroids = updated

    lut = np.sort(centroids.astype(np.float32), axis=1)
    mids = (lut[:, :-1].astype(np.float64) + lut[:, 1:]) / 2
    indices = batched_searchsorted(mids.astype(np.float32), x, "left")  # mid < x -> next code
    inertia = np.sum(w * (x - np.take_along_axis(lut, indices, 1)) ** 2, axis=1)
    return lut, indices.astype(np.uint8), inertia
