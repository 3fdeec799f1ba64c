"""The compiled host code (`reference/native`) against the numpy twins it replaces, in one run.

Run: `python -m pytest benchmarks/bench_native.py --benchmark-enable`. With benchmarks
disabled (the test command) each case runs once on a tiny shape as a smoke test. Each case
checks that C and numpy agree bit for bit before timing, and records both times and their
ratio in extra_info. Skips with the reason when the C code does not build here.
"""

import importlib

import numpy as np
import pytest

from benchmarks.timing import seconds_per_call as seconds
from coreai_opt_gpu import reference
from coreai_opt_gpu.reference import native

exact = importlib.import_module("coreai_opt_gpu.reference.kmeans_1d_exact")

# vector Lloyd step: one 1024x1024 layer at cluster_dim 2 (524,288 vectors), 2 problems, K = 16
VECTOR = {"n": 524288, "problems": 2, "k": 16, "d": 2}
DP = {"blocks": 16, "bins": 4096}  # one DP layer over coarse bins


def _numpy(monkeypatch, fn):
    """fn() with the compiled code switched off."""
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    try:
        return fn()
    finally:
        monkeypatch.delenv(native.NATIVE_ENV)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_vector_step_c_vs_numpy(benchmark, weighted, monkeypatch):
    if not native.available("vector_step"):
        pytest.skip(f"no compiled vector step: {native.unavailable_reason('vector_step')}")
    n = 4096 if benchmark.disabled else VECTOR["n"]
    rng = np.random.default_rng(0)
    x = (rng.standard_t(4, (1, n, VECTOR["d"])) * 0.02).astype(np.float32)
    centroids = np.ascontiguousarray(x[0, rng.integers(0, n, (VECTOR["problems"], VECTOR["k"]))])
    w = rng.random(x.shape).astype(np.float32) if weighted else None

    def ours():
        return native.vector_step(x, centroids, w)

    twin = _numpy(monkeypatch, lambda: reference.assign_update(x, centroids, w))
    assert all(np.array_equal(a, b) for a, b in zip(ours(), twin, strict=True)), "not timed"
    repeat = 1 if benchmark.disabled else 5
    numpy_s = _numpy(monkeypatch, lambda: seconds(lambda: reference.assign_update(x, centroids, w),
                                                  repeat))  # fmt: skip
    benchmark(ours)
    stats = benchmark.stats.stats if benchmark.stats else None
    ours_s = stats.median if stats else seconds(ours, repeat)
    benchmark.extra_info.update(
        {"vectors": n, **{k: v for k, v in VECTOR.items() if k != "n"}, "c_s": ours_s,
         "numpy_s": numpy_s, "speedup_vs_numpy": numpy_s / ours_s}
    )  # fmt: skip


def test_dp_layer_c_vs_numpy(benchmark, monkeypatch):
    if not native.available("dp_layer"):
        pytest.skip(f"no compiled DP layer: {native.unavailable_reason('dp_layer')}")
    g, b = (2, 64) if benchmark.disabled else (DP["blocks"], DP["bins"])
    rng = np.random.default_rng(1)
    values = np.sort(rng.standard_t(4, (g, b)) * 0.02, 1)
    weights = rng.integers(1, 50, (g, b)).astype(np.float64)
    zero = np.zeros((g, 1))
    moments = (weights, weights * values, weights * values**2)
    sums = exact._PrefixSums(*[np.concatenate([zero, np.cumsum(a, 1)], 1) for a in moments])
    layer = sums.cost(np.arange(g)[:, None], np.zeros((1, 1), np.int64), np.arange(b + 1)[None])

    def ours():
        return native.dp_layer(layer, sums.w, sums.wx, sums.wxx)

    want = exact._next_layer(sums, layer)
    got = ours()
    assert np.array_equal(got[0][:, 1:], want[0][:, 1:]), "not timed"
    assert np.array_equal(got[1][:, 1:], want[1][:, 1:]), "not timed"
    repeat = 1 if benchmark.disabled else 5
    numpy_s = seconds(lambda: exact._next_layer(sums, layer), repeat)
    benchmark(ours)
    stats = benchmark.stats.stats if benchmark.stats else None
    ours_s = stats.median if stats else seconds(ours, repeat)
    benchmark.extra_info.update(
        {"blocks": g, "bins": b, "c_s": ours_s, "numpy_s": numpy_s,
         "speedup_vs_numpy": numpy_s / ours_s}
    )  # fmt: skip
