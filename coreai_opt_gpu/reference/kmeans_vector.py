"""numpy twin of `coreai_opt_gpu.kernels.kmeans_vector.assign_update`.

One Lloyd step of vector k-means for P = G * R problems (R restarts of each of G blocks):
problem p clusters data block p // R. Distances are sums over d of (x_d - c_d)^2 accumulated
in float32 in order d = 0..D-1, exactly as the kernel does, so codes and distances match.
"""

from __future__ import annotations

import numpy as np

CHUNK_ELEMENTS = 1 << 20  # N * K distances held at once (measured: cache-sized is fastest)


def assign_update(
    x: np.ndarray, centroids: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x [G, N, D] float32, centroids [P, K, D] float32 (P = G * R), weights [G, N] or None.

    Returns codes [P, N] uint8 (first nearest centroid), distances [P, N] float32 (squared,
    to that centroid), sums [P, K, D] float64 (weighted sums of members) and
    counts [P, K] float64 (their total weight).
    """
    g, n, d = x.shape
    p, k, _ = centroids.shape
    block = np.arange(p) // (p // g)  # problem -> block
    codes = np.empty((p, n), np.uint8)
    distances = np.empty((p, n), np.float32)
    sums = np.empty((p, k, d))
    counts = np.empty((p, k))
    group = max(1, CHUNK_ELEMENTS // max(1, n))  # problems per pass: bounded temporaries
    for first in range(0, p, group):
        problems = slice(first, min(p, first + group))
        _assign(x, block[problems], centroids[problems], codes[problems], distances[problems])
        _update(x, block[problems], weights, codes[problems], k, sums[problems], counts[problems])
    return codes, distances, sums, counts


def _assign(x, block, centroids, codes, distances) -> None:
    """Codes and distances [p, N] of problems clustering x[block] around centroids [p, K, D]:
    a running minimum over the K centroids (the first nearest wins, as argmin), distances
    summed over the components in order, on component-major copies of the data."""
    n, d = x.shape[1], x.shape[2]
    p, k = centroids.shape[:2]
    step = max(1, CHUNK_ELEMENTS // max(1, 4 * p))
    for start in range(0, n, step):
        chunk = np.ascontiguousarray(x[block, start : start + step].transpose(0, 2, 1))
        best = np.full((p, chunk.shape[2]), np.inf, np.float32)  # [p, n]
        code = np.zeros(best.shape, np.uint8)
        dist, diff = np.empty_like(best), np.empty_like(best)
        for c in range(k):
            np.subtract(chunk[:, 0], centroids[:, c, 0, None], out=dist)
            np.multiply(dist, dist, out=dist)
            for j in range(1, d):
                np.subtract(chunk[:, j], centroids[:, c, j, None], out=diff)
                np.multiply(diff, diff, out=diff)
                dist += diff
            closer = dist < best
            np.copyto(best, dist, where=closer)
            code[closer] = c
        codes[:, start : start + step] = code
        distances[:, start : start + step] = best


def _update(x, block, weights, codes, k, sums, counts) -> None:
    """Weighted member sums [p, K, D] and counts [p, K] (float64, in element order)."""
    p, n = codes.shape
    w = np.ones((p, n)) if weights is None else weights[block].astype(np.float64)
    flat = (codes.astype(np.int64) + np.arange(p)[:, None] * k).ravel()
    counts[:] = np.bincount(flat, w.ravel(), p * k).reshape(p, k)
    for j in range(x.shape[2]):
        sums[:, :, j] = np.bincount(flat, (w * x[block, :, j]).ravel(), p * k).reshape(p, k)
