"""The compiled vector Lloyd step (`reference.native.vector_step`) against the numpy twin's
`assign_update`: bit for bit (codes, distances, sums, counts) on ties, duplicate centroids,
zero weights, every cluster_dim and K up to 256; and the twin's dispatch to it."""

import numpy as np
import pytest

from coreai_opt_gpu import reference
from coreai_opt_gpu.reference import native

needs_native = pytest.mark.skipif(
    not native.available(), reason=f"no compiled host path: {native.unavailable_reason()}"
)


def problem(seed: int, g: int, r: int, n: int, k: int, d: int, weighted: bool, ties: bool):
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(4, (g, n, d)) * 0.02).astype(np.float32)
    if ties:
        x = np.round(x, 2).astype(np.float32)  # many equal vectors and equal distances
    if n:  # centroids drawn from the data: exact hits
        centroids = x[rng.integers(0, g, g * r)[:, None], rng.integers(0, n, (g * r, k))]
    else:
        centroids = (rng.standard_normal((g * r, k, d)) * 0.02).astype(np.float32)
    centroids = np.ascontiguousarray(centroids)
    if k > 2:
        centroids[:, 1] = centroids[:, 2]  # duplicate centroids: the first one wins
    weights = None
    if weighted:
        weights = rng.random((g, n, d)).astype(np.float32)
        weights[rng.random((g, n, d)) < 0.2] = 0.0  # zero-weight components
    return x, centroids, weights


@needs_native
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize(
    ("g", "r", "n", "k", "d"),
    [(1, 1, 1, 2, 2), (2, 3, 301, 16, 2), (1, 2, 64, 4, 8), (3, 2, 17, 256, 3),
     (1, 4, 5, 8, 4), (2, 1, 0, 4, 2), (1, 8, 4000, 16, 2)],
    ids=["one", "restarts", "d8", "k256", "n<k", "empty", "large"],
)  # fmt: skip
def test_step_matches_numpy_bit_for_bit(g, r, n, k, d, weighted, ties, monkeypatch):
    x, centroids, weights = problem(g * 100 + n + k, g, r, n, k, d, weighted, ties)
    got = native.vector_step(x, centroids, weights)
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    want = reference.assign_update(x, centroids, weights)
    for name, ours, numpy_twin in zip(["codes", "distances", "sums", "counts"], got, want,
                                      strict=True):  # fmt: skip
        assert ours.dtype == numpy_twin.dtype and ours.shape == numpy_twin.shape, name
        assert np.array_equal(ours, numpy_twin), name


@needs_native
def test_the_twin_runs_it_when_available(monkeypatch):
    calls = []
    real = native.vector_step
    monkeypatch.setattr(native, "vector_step", lambda *a: calls.append(1) or real(*a))
    x, centroids, _ = problem(0, 1, 2, 50, 4, 2, False, False)
    reference.assign_update(x, centroids)
    assert calls == [1]
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    reference.assign_update(x, centroids)
    assert calls == [1]  # numpy when switched off
