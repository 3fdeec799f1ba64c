"""numpy twin of `coreai_opt_gpu.kernels.kmeans_vector.assign_update`.

One Lloyd step of vector k-means for P = G * R problems (R restarts of each of G blocks):
problem p clusters data block p // R. Distances are sums over d of w_d (x_d - c_d)^2 (w_d = 1
unweighted) accumulated in float32 in order d = 0..D-1, exactly as the kernel does, so codes
and distances match. Each step runs in C when the compiled host path is available
(`reference.native`, the same arithmetic), else in numpy.
"""

from __future__ import annotations

import numpy as np

from coreai_opt_gpu.reference import native

CHUNK_ELEMENTS = 1 << 20  # N * K distances held at once (measured: cache-sized is fastest)


def assign_update(
    x: np.ndarray, centroids: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x [G, N, D] float32, centroids [P, K, D] float32 (P = G * R), weights [G, N, D]
    float32 (one per component: distances and means are weighted per component) or None.

    Returns codes [P, N] uint8 (first nearest centroid), distances [P, N] float32 (weighted
    squared, to that centroid), sums [P, K, D] float64 (weighted sums of members, per
    component) and counts [P, K, D] float64 (their total weight, per component).
    Runs in C when the compiled host path is available (`native.vector_step`, bit for bit
    the same; D <= 8), else in numpy.
    """
    x = np.asarray(x, np.float32)
    centroids = np.asarray(centroids, np.float32)
    weights = None if weights is None else np.asarray(weights, np.float32)
    if x.shape[2] <= native.MAX_VECTOR_DIM and native.available("vector_step"):
        return native.vector_step(x, centroids, weights)
    g, n, d = x.shape
    p, k, _ = centroids.shape
    block = np.arange(p) // (p // g)  # problem -> block
    codes = np.empty((p, n), np.uint8)
    distances = np.empty((p, n), np.float32)
    sums = np.empty((p, k, d))
    counts = np.empty((p, k, d))
    group = max(1, CHUNK_ELEMENTS // max(1, n))  # problems per pass: bounded temporaries
    for first in range(0, p, group):
        problems = slice(first, min(p, first + group))
        _assign(x, weights, block[problems], centroids[problems], codes[problems],
                distances[problems])  # fmt: skip
        _update(x, block[problems], weights, codes[problems], k, sums[problems], counts[problems])
    return codes, distances, sums, counts


def _assign(x, weights, block, centroids, codes, distances) -> None:
    """Codes and distances [p, N] of problems clustering x[block] around centroids [p, K, D]:
    a running minimum over the K centroids (the first nearest wins, as argmin), distances
    summed over the components in order, on component-major copies of the data."""
    n, d = x.shape[1], x.shape[2]
    p, k = centroids.shape[:2]
    step = max(1, CHUNK_ELEMENTS // max(1, 4 * p))
    for start in range(0, n, step):
        chunk = np.ascontiguousarray(x[block, start : start + step].transpose(0, 2, 1))
        w = None
        if weights is not None:  # [p, D, n] float32, component-major as the data
            w = np.ascontiguousarray(weights[block, start : start + step].transpose(0, 2, 1))
        best = np.full((p, chunk.shape[2]), np.inf, np.float32)  # [p, n]
        code = np.zeros(best.shape, np.uint8)
        dist, diff = np.empty_like(best), np.empty_like(best)
        for c in range(k):
            np.subtract(chunk[:, 0], centroids[:, c, 0, None], out=dist)
            np.multiply(dist, dist, out=dist)
            if w is not None:
                np.multiply(dist, w[:, 0], out=dist)
            for j in range(1, d):
                np.subtract(chunk[:, j], centroids[:, c, j, None], out=diff)
                np.multiply(diff, diff, out=diff)
                if w is not None:
                    np.multiply(diff, w[:, j], out=diff)
                dist += diff
            closer = dist < best
            np.copyto(best, dist, where=closer)
            code[closer] = c
        codes[:, start : start + step] = code
        distances[:, start : start + step] = best


def _update(x, block, weights, codes, k, sums, counts) -> None:
    """Weighted member sums [p, K, D] and counts [p, K, D] (float64, in element order)."""
    p = codes.shape[0]
    flat = (codes.astype(np.int64) + np.arange(p)[:, None] * k).ravel()
    if weights is None:
        counts[:] = np.bincount(flat, None, p * k).reshape(p, k, 1)
    for j in range(x.shape[2]):
        if weights is None:
            member = x[block, :, j]
        else:
            w = weights[block, :, j].astype(np.float64)
            counts[:, :, j] = np.bincount(flat, w.ravel(), p * k).reshape(p, k)
            member = w * x[block, :, j]
        sums[:, :, j] = np.bincount(flat, member.ravel(), p * k).reshape(p, k)
