"""The compiled vector Lloyd step (`reference.native.vector_step`) against the numpy twin's
`assign_update`: bit for bit (codes, distances, sums, counts) on ties, duplicate centroids,
zero weights, every cluster_dim it compiles (1..8) and K up to 256; its shape checks; and the
twin's dispatch to it (numpy for wider vectors)."""

import numpy as np
import pytest

from coreai_opt_gpu import reference
from coreai_opt_gpu.reference import native

needs_native = pytest.mark.skipif(
    not native.available("vector_step"),
    reason=f"no compiled vector step: {native.unavailable_reason('vector_step')}",
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
     (1, 4, 5, 8, 4), (2, 1, 0, 4, 2), (1, 8, 4000, 16, 2), (2, 2, 300, 4, 1),
     (1, 2, 300, 8, 5), (1, 2, 300, 8, 6), (2, 1, 300, 4, 7)],
    ids=["one", "restarts", "d8", "k256", "n<k", "empty", "large", "d1", "d5", "d6", "d7"],
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


@needs_native
def test_wider_vectors_run_in_numpy(monkeypatch):
    """cluster_dim 9 (beyond the C specializations): the twin runs numpy, and C refuses."""
    x, centroids, weights = problem(9, 1, 2, 200, 4, 9, True, False)
    got = reference.assign_update(x, centroids, weights)
    with pytest.raises(ValueError, match="1 <= D <= 8"):
        native.vector_step(x, centroids, weights)
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    want = reference.assign_update(x, centroids, weights)
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert got[0].max() < 4  # real codes, not uninitialized memory


@needs_native
@pytest.mark.parametrize(
    ("x_shape", "c_shape", "w_shape", "message"),
    [((2, 10, 2), (3, 4, 2), None, "multiple of G"),
     ((1, 10, 2), (1, 4, 3), None, "centroids"),
     ((0, 10, 2), (0, 4, 2), None, "G >= 1"),
     ((1, 10, 2), (1, 4, 2), (1, 10), r"weights must be \[G, N, D\]")],
    ids=["p-not-multiple", "d-mismatch", "no-blocks", "per-vector-weights"],
)  # fmt: skip
def test_shapes_the_c_code_would_misread_are_refused(x_shape, c_shape, w_shape, message):
    x = np.zeros(x_shape, np.float32)
    centroids = np.zeros(c_shape, np.float32)
    weights = None if w_shape is None else np.ones(w_shape, np.float32)
    with pytest.raises(ValueError, match=message):
        native.vector_step(x, centroids, weights)


def test_float64_weights_give_the_same_result_on_both_paths(monkeypatch):
    """The twin takes float32 weights; float64 ones are cast first on the numpy path too."""
    x, centroids, weights = problem(3, 1, 2, 100, 4, 2, True, False)
    got = reference.assign_update(x, centroids, weights.astype(np.float64))
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    want = reference.assign_update(x, centroids, weights)
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_without_a_compiler_the_twin_runs_numpy_and_says_why(no_compiler, monkeypatch):
    assert not native.available("vector_step")
    assert "false failed" in native.unavailable_reason("vector_step")
    x, centroids, weights = problem(4, 1, 2, 100, 4, 2, True, False)
    with pytest.raises(RuntimeError, match="not available"):
        native.vector_step(x, centroids, weights)
    got = reference.assign_update(x, centroids, weights)  # numpy runs instead
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    want = reference.assign_update(x, centroids, weights)
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_an_unknown_library_is_an_error_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: dp_layer, vector_step"):
        native.available("kmeans")
