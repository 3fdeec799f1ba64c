"""Scalar k-means: numpy building blocks, the exact oracle, and the engine's quality bar.

Tolerance tiers: exact for searches and assignments; Lloyd fixed-point identities to float
rounding; relative MSE <= 1.005 x the exact optimum for clustering quality.
"""

import itertools

import numpy as np
import pytest
import torch

from coreai_opt_gpu import reference
from coreai_opt_gpu.engine import cluster_blocks, scalar
from coreai_opt_gpu.engine.fast_mode import fast_mode_table, fast_mode_values

QUALITY_BAR = 1.005


def cluster_scalar(x, k, weights=None, rounding_precision=None, max_iter=300):
    """The engine's scalar path on numpy arrays (numpy in, numpy out)."""
    w = None if weights is None else torch.from_numpy(np.asarray(weights, np.float64))
    result = scalar.cluster_scalar(torch.from_numpy(x), k, w, rounding_precision, max_iter)
    return tuple(t.numpy() for t in result)


def student_t(shape, seed=0):
    return (np.random.default_rng(seed).standard_t(4, size=shape) * 0.02).astype(np.float32)


def normal(shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.02).astype(np.float32)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_searchsorted_is_exact(side):
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((6, 40)).astype(np.float32)
    rows[0, :10] = 0.0
    rows[1, :5] = -0.0
    rows[2] = np.round(rows[2], 1)  # ties
    rows = np.sort(rows, axis=1)
    values = np.concatenate([rng.standard_normal((6, 9)), rows[:, :3], np.zeros((6, 2))], 1)
    values = values.astype(np.float32)
    values[3, 0] = -0.0
    expected = np.stack([np.searchsorted(r, v, side) for r, v in zip(rows, values, strict=True)])
    assert np.array_equal(reference.batched_searchsorted(rows, values, side), expected)


def test_count_at_most_compares_in_float64():
    rows = np.sort(np.random.default_rng(1).standard_normal((3, 50)).astype(np.float32), 1)
    bounds = np.concatenate(
        [
            np.random.default_rng(2).standard_normal((3, 6)),
            rows[:, :2].astype(np.float64),
            np.nextafter(rows[:, 2:3].astype(np.float64), -np.inf),
        ],
        1,
    )
    expected = (rows[:, None, :].astype(np.float64) <= bounds[:, :, None]).sum(-1)
    assert np.array_equal(reference.SortedRows(rows).count_at_most(bounds), expected)


def brute_force_optimum(x, w, k):
    best = np.inf
    for cuts in itertools.combinations(range(1, len(x)), min(k, len(x)) - 1):
        edges = (0, *cuts, len(x))
        cost = 0.0
        for start, end in itertools.pairwise(edges):
            ww, xx = w[start:end], x[start:end]
            if ww.sum() > 0:
                cost += (ww * (xx - (ww * xx).sum() / ww.sum()) ** 2).sum()
        best = min(best, cost)
    return best


def test_exact_oracle_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(30):
        b, k = int(rng.integers(1, 9)), int(rng.integers(1, 5))
        x = np.sort(rng.standard_normal((3, b)), 1)
        w = rng.random((3, b)) * (rng.random((3, b)) > 0.2)
        centroids, cost = reference.kmeans_1d_exact(x, w, k)
        assert np.all(np.diff(centroids, axis=1) >= 0)
        for g in range(3):
            expected = brute_force_optimum(x[g], w[g], k)
            np.testing.assert_allclose(cost[g], expected, rtol=1e-9, atol=1e-12)
            nearest = np.abs(x[g][:, None] - centroids[g][None]).min(1)
            np.testing.assert_allclose((w[g] * nearest**2).sum(), expected, rtol=1e-9, atol=1e-12)


def test_exact_oracle_pads_with_last_centroid():
    x = np.array([[1.0, 2.0, 2.0, 5.0]])
    centroids, cost = reference.kmeans_1d_exact(x, np.ones_like(x), 6)
    assert cost[0] == 0.0
    assert centroids[0].tolist() == [1.0, 2.0, 5.0, 5.0, 5.0, 5.0]


def rounded(x, rounding_precision=4):
    """coreai_opt's fast-mode values of x (numpy in, numpy out)."""
    return fast_mode_values(torch.from_numpy(x), rounding_precision).numpy()


def optimum(x, w, k, rounding_precision=None):
    """Exact optimum per block; in fast mode over the distinct rounded values, weighted."""
    if rounding_precision is None:
        order = np.argsort(x, 1)
        values, weights = np.take_along_axis(x, order, 1), np.take_along_axis(w, order, 1)
        return reference.kmeans_1d_exact(values, weights, k)[1]
    costs = []
    for block, block_w in zip(rounded(x, rounding_precision), w, strict=True):
        values, inverse = np.unique(block, return_inverse=True)
        weights = np.bincount(inverse, block_w)
        costs.append(reference.kmeans_1d_exact(values[None], weights[None], k)[1][0])
    return np.array(costs)


@pytest.mark.parametrize("n_bits", [1, 2, 3, 4, 6, 8])
@pytest.mark.parametrize("data", [student_t, normal], ids=["student-t4", "normal"])
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_quality_bar_against_exact_optimum(n_bits, data, mode):
    """relative MSE <= 1.005 x optimum: grouped blocks (G=4) and one per-tensor-like block."""
    k = 2**n_bits
    n = 2048 if n_bits == 8 else 4096
    precision = 4 if mode == "fast" else None
    for shape in [(4, n), (1, 2 * n)]:
        x = data(shape, seed=n_bits)
        w = np.ones(shape)
        lut, codes, inertia = cluster_scalar(x, k, None, precision)
        best = optimum(x, w, k, precision)
        assert np.all(inertia <= QUALITY_BAR * best + 1e-12), inertia / best
        assert lut.shape == (shape[0], k) and np.all(np.diff(lut, axis=1) >= 0)
        clustered = x if precision is None else rounded(x)
        recomputed = (clustered - np.take_along_axis(lut, codes.astype(np.int64), 1)) ** 2
        np.testing.assert_allclose(recomputed.sum(1), inertia, rtol=1e-4)


def test_weighted_quality_and_steering():
    x = student_t((3, 2048), seed=5)
    w = np.random.default_rng(5).random((3, 2048)) ** 4
    _, _, inertia = cluster_scalar(x, 16, w)
    assert np.all(inertia <= QUALITY_BAR * optimum(x, w, 16))
    outlier = np.array([[0.0, 0.1, 0.2, 10.0]], np.float32)
    lut, _, _ = cluster_scalar(outlier, 2, np.array([[1.0, 1.0, 1.0, 0.0]]))
    assert lut[0, 1] < 1.0  # a zero-weight outlier does not pull a centroid


def test_lloyd_fixed_point_and_assignment():
    x = student_t((5, 300), seed=2)
    lut, codes, _ = cluster_scalar(x, 8, max_iter=1000)
    nearest = np.abs(x[:, :, None] - lut[:, None, :].astype(np.float64)).min(2)
    chosen = np.abs(x - np.take_along_axis(lut, codes.astype(np.int64), 1).astype(np.float64))
    assert np.array_equal(chosen, nearest)
    for g in range(5):
        for k in np.unique(codes[g]):
            assert abs(x[g, codes[g] == k].mean() - lut[g, k]) <= 1e-6


def test_few_distinct_values_exact_with_padding():
    x = np.array([[1.0, 1.0, 2.0, 5.0, 5.0, 5.0], [3.0] * 6], np.float32)
    lut, codes, inertia = cluster_scalar(x, 4)
    assert np.all(inertia == 0.0)
    assert np.array_equal(np.take_along_axis(lut, codes.astype(np.int64), 1), x)
    assert lut[0].tolist() == [1.0, 2.0, 5.0, 5.0] and lut[1].tolist() == [3.0] * 4


def test_fast_mode_semantics_and_out_of_fp16_range_blocks():
    x = np.array([[0.012345, -0.5, 0.25, 1e-6], [7e4, 1.0, 2.0, 3.0]], np.float32)
    # upstream: float32(round(fp16(x) * 1e4)) / 1e4; fp16(0.012345) = 0.012344360...
    expected = (np.round(x[:1].astype(np.float16).astype(np.float32) * 1e4) / 1e4).astype(
        np.float32
    )
    assert np.array_equal(rounded(x[:1]), expected)
    table = fast_mode_table(4, torch.device("cpu"))
    slots = table.key_to_slot.numpy()[reference.kmeans_1d.fp16_keys(x[:1])]
    assert np.array_equal(table.slot_values.numpy()[slots], expected)  # the slot table agrees
    lut, _, inertia = cluster_scalar(x, 4, rounding_precision=4)
    assert lut[0].tolist() == pytest.approx([-0.5, 0.0, 0.0123, 0.25], abs=1e-7)
    assert 7e4 in lut[1]  # out-of-range block clustered exactly, not cast to fp16 (inf)
    assert np.all(inertia == 0.0)


@pytest.mark.parametrize("precision", range(31))  # every precision the table allows
def test_fast_mode_table_is_fast_mode_values(precision):
    """Every finite fp16 value's slot holds exactly what `fast_mode_values` computes in torch
    (the table is built in numpy), slots rise with the value and are all used."""
    halves = np.arange(-65504, 65505, dtype=np.float32).astype(np.float16)
    halves = np.unique(np.concatenate([halves, np.arange(1 << 16, dtype=np.uint16)
                                       .view(np.float16)]))  # fmt: skip
    halves = halves[np.isfinite(halves)]  # every finite fp16 value, ascending
    table = fast_mode_table(precision, torch.device("cpu"))
    slots = table.key_to_slot.numpy()[reference.kmeans_1d.fp16_keys(halves.astype(np.float32))]
    want = fast_mode_values(torch.from_numpy(halves.astype(np.float32)), precision).numpy()
    assert np.array_equal(table.slot_values.numpy()[slots], want + np.float32(0.0))
    assert np.all(np.diff(slots) >= 0) and set(np.unique(slots)) == set(range(table.slots))


def test_deterministic():
    x = student_t((4, 500), seed=3)
    for precision in (None, 4):
        first, second = cluster_scalar(x, 8, None, precision), cluster_scalar(x, 8, None, precision)
        for a, b in zip(first, second, strict=True):
            assert np.array_equal(a, b)


def test_engine_shapes_and_batching():
    blocks = torch.from_numpy(student_t((6, 64, 1)))
    result = cluster_blocks(blocks, 3)
    assert result.lut.shape == (6, 8, 1) and result.indices.shape == (6, 64)
    assert result.indices.dtype == torch.uint8 and result.inertia.shape == (6,)
    alone = cluster_blocks(blocks[2:3], 3)
    assert torch.equal(alone.lut, result.lut[2:3])  # blocks do not influence each other


@pytest.mark.parametrize(
    ("blocks", "n_bits", "message"),
    [
        (torch.tensor([[[1.0], [float("nan")]]]), 2, "NaN or inf"),
        (torch.tensor([[[1.0], [float("inf")]]]), 2, r"first blocks affected: \[0\]"),
        (torch.zeros(2, 0, 1), 2, "non-empty"),
        (torch.zeros(4, 1), 2, r"\[G, N, D\]"),
        (torch.zeros(1, 4, 1), 9, "allowed: 1..8"),
    ],
)
def test_engine_rejects_bad_input(blocks, n_bits, message):
    with pytest.raises(ValueError, match=message):
        cluster_blocks(blocks, n_bits)
    with pytest.raises(ValueError, match="non-negative"):
        cluster_blocks(torch.zeros(1, 4, 1), 2, weights=-torch.ones(1, 4))
    with pytest.raises(ValueError, match="finite"):
        cluster_blocks(torch.zeros(1, 4, 1), 2, weights=torch.full((1, 4), float("nan")))


def test_engine_chunks_do_not_change_results(monkeypatch):
    from coreai_opt_gpu.engine import cluster as engine_cluster

    blocks = torch.from_numpy(student_t((7, 300, 1), seed=9))
    whole = cluster_blocks(blocks, 3, rounding_precision=4)
    monkeypatch.setattr(engine_cluster, "SCALAR_CHUNK_VALUES", 2 * 300)  # 2 blocks per call
    chunked = cluster_blocks(blocks, 3, rounding_precision=4)
    assert torch.equal(whole.lut, chunked.lut) and torch.equal(whole.indices, chunked.indices)
    # a reduction over rows padded differently per call: equal to float64 rounding
    torch.testing.assert_close(whole.inertia, chunked.inertia, rtol=1e-12, atol=0)
