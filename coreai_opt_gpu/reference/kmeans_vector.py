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
    data = x[np.arange(p) // (p // g)]  # [P, N, D] view per problem
    codes = np.empty((p, n), np.uint8)
    distances = np.empty((p, n), np.float32)
    step = max(1, CHUNK_ELEMENTS // max(1, p * k))
    for start in range(0, n, step):
        chunk = data[:, start : start + step]  # [P, n, D]
        dist = np.zeros((p, chunk.shape[1], k), np.float32)
        for j in range(d):
            diff = chunk[:, :, j, None] - centroids[:, None, :, j]
            dist += diff * diff
        nearest = dist.argmin(2)
        codes[:, start : start + step] = nearest
        distances[:, start : start + step] = np.take_along_axis(dist, nearest[..., None], 2)[..., 0]
    w = np.ones((g, n)) if weights is None else weights.astype(np.float64)
    w = w[np.arange(p) // (p // g)]  # [P, N]
    flat = (codes.astype(np.int64) + np.arange(p)[:, None] * k).ravel()
    counts = np.bincount(flat, w.ravel(), p * k).reshape(p, k)
    sums = np.stack([np.bincount(flat, (w * data[:, :, j]).ravel(), p * k) for j in range(d)], -1)
    return codes, distances, sums.reshape(p, k, d), counts
