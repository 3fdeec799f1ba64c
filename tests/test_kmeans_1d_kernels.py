"""Scalar k-means kernels against their numpy twins, and the engine run through them.

Tolerance tiers: exact for slots, counts, lengths, edges, codes, iteration counts and (given
the same prefix sums) centroids; normalized error for prefix sums and inertia (reductions in
another order). Freshly allocated kernel outputs are poisoned (NaN / sentinel) so an entry a
kernel forgot to write cannot pass.
"""

import numpy as np
import pytest
import torch

from coreai_opt_gpu import reference
from coreai_opt_gpu.backend import BACKEND_ENV
from coreai_opt_gpu.engine.fast_mode import fast_mode_table
from coreai_opt_gpu.kernels import kmeans_1d as kernels
from tests.test_kmeans_1d import QUALITY_BAR, cluster_scalar, optimum, rounded, student_t

TABLE = fast_mode_table(4, torch.device("cpu"))


@pytest.fixture
def poisoned(monkeypatch):
    """torch.empty returns NaN-filled floats and -7-filled integers while a test runs."""
    empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan") if t.is_floating_point() else -7)

    monkeypatch.setattr(torch, "empty", poisoned_empty)


def normalized_error(got, expected):
    scale = max(float(np.abs(expected).max()), 1e-300)
    return float(np.abs(got - expected).max()) / scale


def blocks(g, n, seed=0, dtype=np.float32):
    x = student_t((g, n), seed)
    if n > 3:
        x[0, :3] = [0.0, -0.0, 1e-7]  # signed zeros and a value rounding to zero
    return x.astype(dtype)


def histogram_problem(g, n, seed=0):
    x = blocks(g, n, seed)
    counts, low, span = reference.grid_histogram(x, TABLE.key_to_slot.numpy(), TABLE.slots)
    width = min(n, TABLE.slots)
    return x, reference.histogram_rows(counts, low, span, TABLE.slot_values.numpy(), width)


def sorted_problem(g, m, weighted, seed=0):
    values = np.sort(student_t((g, m), seed), 1)
    values[0, : m // 3] = values[0, 0]  # a run of ties
    weights = np.random.default_rng(seed).random((g, m)) if weighted else None
    prefix = reference.prefix_sums(values, weights)
    return values, np.full(g, m, np.int32), *prefix


def as_tensors(arrays, device):
    return [
        None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays
    ]


def valid_rows(got, expected, lengths, extra=0):
    """Compare the first lengths[g] + extra entries of every row exactly."""
    for g, length in enumerate(lengths):
        assert np.array_equal(got[g, : length + extra], expected[g, : length + extra]), g


@pytest.mark.parametrize(
    ("g", "n"), [(3, 1000), (1, 1), (2, 4096), (2, 16500)], ids=["odd", "one", "pow2", "long"]
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_grid_histogram_matches_twin_exactly(g, n, dtype, device, poisoned):
    x = torch.from_numpy(blocks(g, n)).to(getattr(torch, dtype))
    counts, low, span = kernels.grid_histogram(
        x.to(device), TABLE.key_to_slot.to(device), TABLE.slots
    )
    r_counts, r_low, r_span = reference.grid_histogram(
        x.float().numpy(), TABLE.key_to_slot.numpy(), TABLE.slots
    )
    assert np.array_equal(low.cpu().numpy(), r_low) and np.array_equal(span.cpu().numpy(), r_span)
    valid_rows(counts.cpu().numpy(), r_counts, r_span)
    assert int(counts.cpu()[0, : r_span[0]].sum()) == n


@pytest.mark.parametrize(("g", "n"), [(3, 1000), (1, 1), (2, 3000)], ids=["odd", "one", "wide"])
def test_histogram_rows_match_twin(g, n, device, poisoned):
    x = blocks(g, n)
    counts, low, span = reference.grid_histogram(x, TABLE.key_to_slot.numpy(), TABLE.slots)
    width = min(n, TABLE.slots)
    got = kernels.histogram_rows(
        *as_tensors((counts, low, span, TABLE.slot_values.numpy()), device), width
    )
    got = [t.cpu().numpy() for t in got]
    values, lengths, pw, pwx, pwxx = reference.histogram_rows(
        counts, low, span, TABLE.slot_values.numpy(), width
    )
    assert np.array_equal(got[1], lengths)
    valid_rows(got[0], values, lengths)
    valid_rows(got[2], pw, lengths, extra=1)  # integer counts: exact
    for mine, twin in ((got[3], pwx), (got[4], pwxx)):
        for row, length in enumerate(lengths):
            assert normalized_error(mine[row, : length + 1], twin[row, : length + 1]) < 1e-12


@pytest.mark.parametrize(("g", "m"), [(3, 97), (2, 2048), (1, 1)], ids=["odd", "pow2", "one"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unit", "weighted"])
def test_prefix_sums_match_twin(g, m, weighted, device, poisoned):
    values, _, *expected = sorted_problem(g, m, weighted)
    weights = np.random.default_rng(0).random((g, m)) if weighted else None
    expected = reference.prefix_sums(values, weights)
    got = kernels.prefix_sums(*as_tensors((values, weights), device))
    assert (got[0] is None) == (not weighted)
    for mine, twin in zip(got, expected, strict=True):
        if twin is not None:
            assert normalized_error(mine.cpu().numpy(), twin) < 1e-12


@pytest.mark.parametrize(
    ("k", "bins", "source", "m"),
    [(4, 64, "histogram", 1500), (16, 256, "sorted", 1000), (8, 100, "weighted", 1000),
     (1, 64, "sorted", 1000), (4, 200, "sorted", 150)],
    ids=["hist-k4", "sorted-k16", "weighted-k8", "k1", "rows-shorter-than-bins"],
)  # fmt: skip
def test_coarse_dp_start_matches_twin_exactly(k, bins, source, m, device):
    if source == "histogram":
        _, arrays = histogram_problem(2, m)
    else:
        arrays = sorted_problem(2, m, weighted=source == "weighted")
    expected = reference.coarse_dp_start(*arrays, k, bins)
    got = kernels.coarse_dp_start(*as_tensors(arrays, device), k, bins).cpu().numpy()
    assert np.array_equal(got, expected)
    assert np.all(np.diff(got, axis=1) >= 0)


def test_coarse_dp_start_is_the_exact_optimum_over_its_bins():
    """With one bin per entry the DP start is the exact k-means of the row."""
    values, lengths, pw, pwx, pwxx = sorted_problem(2, 40, weighted=True)
    weights = np.diff(pw, axis=1)
    start = reference.coarse_dp_start(values, lengths, pw, pwx, pwxx, 4, 64)
    optimal, _ = reference.kmeans_1d_exact(values, weights, 4)
    np.testing.assert_allclose(start, optimal, rtol=1e-12)


@pytest.mark.parametrize("max_iter", [0, 1, 60])
@pytest.mark.parametrize(
    ("source", "k", "launch"),
    [("histogram", 16, None), ("sorted", 4, None), ("weighted", 8, None),
     ("sorted", 1, None), ("sorted", 16, kernels.Lloyd1dLaunch(1, 1)),
     ("sorted", 64, None)],
    ids=["hist-k16", "sorted-k4", "weighted-k8", "k1", "one-block-per-program", "k64"],
)  # fmt: skip
def test_lloyd_kernel_matches_twin_exactly(source, k, launch, max_iter, device, poisoned):
    if source == "histogram":
        _, arrays = histogram_problem(3, 900)
    else:
        arrays = sorted_problem(3, 700, weighted=source == "weighted")
    rng = np.random.default_rng(k)
    start = np.sort(rng.choice(arrays[0][:, :100].ravel(), (3, k)), 1).astype(np.float64)
    start[-1, :] = start[-1, 0]  # all centroids equal: empty clusters keep their place
    expected = reference.lloyd_1d(*arrays, start, max_iter)
    got = kernels.lloyd_1d(*as_tensors((*arrays, start), device), max_iter, launch=launch)
    centroids, inertia, iterations = (t.cpu().numpy() for t in got)
    assert np.array_equal(centroids, expected[0])
    assert np.array_equal(iterations, expected[2])
    assert normalized_error(inertia, expected[1]) < 1e-9


def test_lloyd_launch_fills_a_warp():
    for k in (2, 4, 16, 256):
        launch = kernels.lloyd_1d_launch(k)
        lanes = launch.blocks_per_program * max(k, 1)
        assert lanes >= 128 and lanes == 64 * launch.num_warps  # full warps, two lanes each


@pytest.mark.parametrize(
    "launch", [None, kernels.Assign1dLaunch(16, 1), kernels.Assign1dLaunch(128, 2)],
    ids=["auto", "16", "128"],
)  # fmt: skip
@pytest.mark.parametrize(
    ("g", "n", "k"),
    [(3, 100, 4), (2, 1000, 16), (1, 7, 256), (2, 0, 4), (2, 50, 1), (2, 64, 2), (2, 16500, 16)],
    ids=["odd", "k16", "k256", "empty", "k1", "k2", "long"],
)
@pytest.mark.parametrize("fast", [False, True], ids=["exact", "fast"])
def test_assign_kernel_matches_twin_exactly(g, n, k, fast, launch, device):
    x = student_t((g, n), seed=k)
    centroids = np.sort(student_t((g, k), seed=k + 1).astype(np.float64), 1)
    if n and k > 1:
        x[0, 0] = (centroids[0, 0] + centroids[0, 1]) / 2  # on a boundary: the lower code
    tables = (TABLE.key_to_slot, TABLE.slot_values) if fast else (None, None)
    out = torch.full((g, n), 255, dtype=torch.uint8, device=device)  # poisoned
    got = kernels.assign_1d(
        torch.from_numpy(x).to(device),
        torch.from_numpy(centroids).to(device),
        *(None if t is None else t.to(device) for t in tables),
        launch=launch,
        out=out,
    )
    host_tables = [None if t is None else t.numpy() for t in tables]
    assert np.array_equal(got.cpu().numpy(), reference.assign_1d(x, centroids, *host_tables))


def test_assign_binary_search_is_nearest_centroid():
    x = student_t((2, 500), seed=3)
    centroids = np.sort(student_t((2, 256), seed=4).astype(np.float64), 1)
    codes = reference.assign_1d(x, centroids).astype(np.int64)
    distance = np.abs(x[:, :, None].astype(np.float64) - centroids[:, None, :])
    chosen = np.take_along_axis(distance, codes[:, :, None], 2)[:, :, 0]
    assert np.array_equal(chosen, distance.min(2))


@pytest.mark.parametrize("n_bits", [2, 4])
@pytest.mark.parametrize("precision", [None, 4], ids=["exact", "fast"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unit", "weighted"])
def test_engine_on_triton_path_meets_quality_bar(n_bits, precision, weighted, monkeypatch):
    """The device path (Triton kernels, torch glue) on CPU tensors under the interpreter."""
    monkeypatch.setenv(BACKEND_ENV, "triton")
    x = student_t((2, 512), seed=n_bits)
    w = np.random.default_rng(n_bits).random((2, 512)) if weighted else None
    lut, codes, inertia = cluster_scalar(x, 2**n_bits, w, precision)
    weights = np.ones_like(x, dtype=np.float64) if w is None else w
    assert np.all(inertia <= QUALITY_BAR * optimum(x, weights, 2**n_bits, precision))
    clustered = x if precision is None else rounded(x)
    monkeypatch.setenv(BACKEND_ENV, "numpy")
    assert np.array_equal(codes, reference.assign_1d(clustered, lut))
    twin = cluster_scalar(x, 2**n_bits, w, precision)
    assert np.array_equal(lut, twin[0]) and np.array_equal(codes, twin[1])
