"""The compiled host DP layer (`reference.native`) against the numpy twin's: bit for bit, on
problems with ties, empty runs and zero weights; and its dispatch (disabled, no compiler)."""

import importlib

import numpy as np
import pytest

from coreai_opt_gpu.reference import native

exact = importlib.import_module("coreai_opt_gpu.reference.kmeans_1d_exact")

needs_native = pytest.mark.skipif(
    not native.available("dp_layer"),
    reason=f"no compiled DP layer: {native.unavailable_reason('dp_layer')}",
)


def problem(rng, g: int, b: int, ties: bool):
    """Prefix sums [G, B+1] of sorted rows; with ties: coarse values and zero weights."""
    x = rng.standard_t(4, (g, b)) * 0.02
    x = np.sort(np.round(x, 2) if ties else x, 1)
    w = rng.integers(0, 4 if ties else 50, (g, b)).astype(np.float64)
    zero = np.zeros((g, 1))
    sums = [np.concatenate([zero, np.cumsum(a, 1)], 1) for a in (w, w * x, w * x * x)]
    return exact._PrefixSums(*sums)


@needs_native
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize(("g", "b"), [(1, 1), (1, 7), (3, 64), (5, 300), (2, 1025)])
def test_layer_matches_numpy_bit_for_bit(g, b, ties):
    rng = np.random.default_rng(g * 1000 + b + ties)
    sums = problem(rng, g, b, ties)
    layer = sums.cost(np.arange(g)[:, None], np.zeros((1, 1), np.int64), np.arange(b + 1)[None])
    for _ in range(5):  # a few layers deep, each from the numpy result
        want, want_opt = exact._next_layer(sums, layer)
        got, got_opt = native.dp_layer(layer, sums.w, sums.wx, sums.wxx)
        assert np.array_equal(got_opt[:, 1:], want_opt[:, 1:])
        assert np.array_equal(got[:, 1:], want[:, 1:])  # exact float64
        layer = want


@needs_native
@pytest.mark.parametrize("k", [2, 16, 256])
def test_dp_results_are_the_same_with_and_without_it(k, monkeypatch):
    sums = problem(np.random.default_rng(k), 4, 600, ties=True)
    got = exact.kmeans_1d_dp(sums.w, sums.wx, sums.wxx, k)
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    assert not native.available("dp_layer")
    want = exact.kmeans_1d_dp(sums.w, sums.wx, sums.wxx, k)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_without_a_compiler_it_is_unavailable_and_says_why(no_compiler):
    assert not native.available("dp_layer")
    assert "false failed" in native.unavailable_reason("dp_layer")
    assert not list(no_compiler.glob("*.so"))  # nothing half-built is left to load
    with pytest.raises(RuntimeError, match="not available"):
        native.dp_layer(*[np.zeros((1, 2))] * 4)
    sums = problem(np.random.default_rng(0), 2, 50, ties=False)
    centroids, _ = exact.kmeans_1d_dp(sums.w, sums.wx, sums.wxx, 4)  # numpy runs instead
    assert centroids.shape == (2, 4)


def test_an_invalid_switch_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv(native.NATIVE_ENV, "yes")
    with pytest.raises(ValueError, match="COREAI_OPT_GPU_NATIVE='yes' is not valid"):
        native.available("dp_layer")
