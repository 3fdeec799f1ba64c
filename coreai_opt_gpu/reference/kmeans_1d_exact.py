"""Exact weighted 1-D k-means by dynamic programming (numpy), batched over blocks.

For sorted values x_1..x_B with weights w, the optimal K-clustering splits them into K
contiguous runs. D[k][i] = min_j D[k-1][j] + cost(j, i), with cost(j, i) the weighted squared
error of run [j, i) around its mean. The best j is monotone in i, so each layer is solved by
divide and conquer in O(B log B); every block and every subproblem of a recursion level is
evaluated in one vectorized step. Runs may be empty, so blocks with fewer distinct values than
K come out exact (their unused LUT entries repeat the last centroid).

This is the test oracle of the scalar engine and, on coarse bins, its initializer. Each layer
runs in C when the compiled host path is available (`reference.native`, the same arithmetic),
else in numpy (`_next_layer`).
"""

from __future__ import annotations

import numpy as np

from coreai_opt_gpu.reference import native


class _PrefixSums:
    """Prefix sums of w, w*x, w*x^2 over sorted rows: [G, B+1] each (float64, leading 0)."""

    def __init__(self, w: np.ndarray, wx: np.ndarray, wxx: np.ndarray) -> None:
        self.w, self.wx, self.wxx = (a.astype(np.float64) for a in (w, wx, wxx))

    @classmethod
    def of(cls, values: np.ndarray, weights: np.ndarray) -> _PrefixSums:
        """From sorted rows [G, B] and their weights."""
        x, w = values.astype(np.float64), weights.astype(np.float64)
        zero = np.zeros((x.shape[0], 1))
        return cls(
            np.concatenate([zero, np.cumsum(w, 1)], 1),
            np.concatenate([zero, np.cumsum(w * x, 1)], 1),
            np.concatenate([zero, np.cumsum(w * x * x, 1)], 1),
        )

    def cost(self, g: np.ndarray, j: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Weighted squared error of run [j, i) of block g around its mean (0 when empty)."""
        width = self.w.shape[1]
        start, end = g * width + j, g * width + i  # flat positions
        s0 = self.w.take(end) - self.w.take(start)
        s1 = self.wx.take(end) - self.wx.take(start)
        s2 = self.wxx.take(end) - self.wxx.take(start)
        empty = s0 <= 0
        s0[empty] = 1.0
        return np.maximum(s2 - s1 * s1 / s0, 0.0)  # 0 for an empty run: s1 = s2 = 0

    def mean(self, g: np.ndarray, j: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Weighted mean of run [j, i) (NaN when it has no weight)."""
        s0 = self.w[g, i] - self.w[g, j]
        s1 = self.wx[g, i] - self.wx[g, j]
        return np.where(s0 > 0, s1 / np.where(s0 > 0, s0, 1.0), np.nan)


def _next_layer(sums: _PrefixSums, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """D[k] and its argmins from D[k-1] [G, B+1], by batched divide and conquer.

    Each step evaluates, for every open subproblem, its middle row i against every candidate
    j, laid out flat ([T] = all candidates of all subproblems); what is constant per
    subproblem (the prefix sums at i) is repeated rather than gathered. The arithmetic is
    `_PrefixSums.cost`'s, in the same order, so results are bit for bit the kernel's."""
    g_count, width = prev.shape
    b = width - 1
    cur = np.zeros_like(prev)
    opt = np.zeros(prev.shape, dtype=np.int64)
    flat_prev = prev.reshape(-1)
    flat_w, flat_wx, flat_wxx = (a.reshape(-1) for a in (sums.w, sums.wx, sums.wxx))
    # open subproblems: rows i in [lo, hi] of block g, their best j lies in [olo, ohi]
    g = np.arange(g_count)
    lo, hi = np.ones(g_count, np.int64), np.full(g_count, b, np.int64)
    olo, ohi = np.zeros(g_count, np.int64), np.full(g_count, b, np.int64)
    while g.size:
        mid = (lo + hi) // 2
        counts = np.minimum(mid, ohi) - olo + 1
        total = int(counts.sum())
        starts = np.cumsum(counts) - counts
        base = g * width
        j = np.repeat(base + olo - starts, counts)  # [T] flat position of each candidate j
        j += np.arange(total)
        end = base + mid  # flat position of each subproblem's row i
        s0 = np.repeat(flat_w.take(end), counts) - flat_w.take(j)
        s1 = np.repeat(flat_wx.take(end), counts) - flat_wx.take(j)
        s2 = np.repeat(flat_wxx.take(end), counts) - flat_wxx.take(j)
        s0[s0 <= 0] = 1.0  # an empty run costs 0: s1 = s2 = 0
        s1 *= s1
        s1 /= s0
        s2 -= s1
        values = flat_prev.take(j)
        values += np.maximum(s2, 0.0, out=s2)
        best = np.minimum.reduceat(values, starts)
        position = np.where(values <= np.repeat(best, counts), np.arange(total), total)
        best_j = j.take(np.minimum.reduceat(position, starts)) - base  # leftmost argmin
        cur[g, mid], opt[g, mid] = best, best_j
        left, right = lo <= mid - 1, mid + 1 <= hi
        g = np.concatenate([g[left], g[right]])
        lo, hi = (
            np.concatenate([lo[left], mid[right] + 1]),
            np.concatenate([mid[left] - 1, hi[right]]),
        )
        olo = np.concatenate([olo[left], best_j[right]])
        ohi = np.concatenate([best_j[left], ohi[right]])
    return cur, opt


def pad_empty_clusters(centroids: np.ndarray) -> np.ndarray:
    """[G, K] ascending with NaN for empty clusters -> used centroids first, the rest repeating
    the last one (a block with fewer distinct values than K)."""
    order = np.argsort(np.isnan(centroids), axis=1, kind="stable")
    packed = np.take_along_axis(centroids, order, 1)
    used = np.maximum((~np.isnan(packed)).sum(1), 1)
    last = np.take_along_axis(packed, (used - 1)[:, None], 1)
    filled = np.where(np.arange(packed.shape[1])[None, :] < used[:, None], packed, last)
    return np.nan_to_num(filled, nan=0.0)  # blocks without any weight


def kmeans_1d_exact(
    values: np.ndarray, weights: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal weighted k-means of every row of sorted `values` [G, B] (weights [G, B] >= 0).

    Returns centroids [G, K] float64 ascending (padded with the last centroid when a block
    has fewer distinct values than K) and the optimal weighted squared error [G].
    """
    return _solve(_PrefixSums.of(values, weights), k)


def kmeans_1d_dp(
    prefix_w: np.ndarray, prefix_wx: np.ndarray, prefix_wxx: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The same optimum over B runs given by their prefix sums of w, w*x, w*x^2 ([G, B+1]
    float64, leading 0): the split of the runs into K contiguous groups with the least
    squared error. Twin of the Triton DP inside `coarse_dp_start`."""
    return _solve(_PrefixSums(prefix_w, prefix_wx, prefix_wxx), k)


def _solve(sums: _PrefixSums, k: int) -> tuple[np.ndarray, np.ndarray]:
    g_count, b = sums.w.shape[0], sums.w.shape[1] - 1
    rows = np.arange(g_count)[:, None]
    layer = sums.cost(rows, np.zeros((1, 1), np.int64), np.arange(b + 1)[None, :])
    argmins = []
    step = _next_layer
    if k > 1 and native.available("dp_layer"):  # the same layer, compiled (bit for bit the same)

        def step(sums: _PrefixSums, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return native.dp_layer(prev, sums.w, sums.wx, sums.wxx)

    for _ in range(1, k):
        layer, opt = step(sums, layer)
        argmins.append(opt)
    ends = np.full(g_count, b, np.int64)
    rows = np.arange(g_count)
    centroids = np.empty((g_count, k))
    for cluster in range(k - 1, 0, -1):
        starts = argmins[cluster - 1][rows, ends]
        centroids[:, cluster] = sums.mean(rows, starts, ends)
        ends = starts
    centroids[:, 0] = sums.mean(rows, np.zeros_like(ends), ends)
    return pad_empty_clusters(centroids), layer[:, b]
