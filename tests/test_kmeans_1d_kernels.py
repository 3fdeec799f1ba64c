"""Scalar k-means kernels (`lloyd_1d`, `assign_1d`) against their numpy twins, and the engine
run end to end through them. Tolerance tier: exact (float64 centroids, uint8 codes)."""

import numpy as np
import pytest
import torch

from coreai_opt_gpu import reference
from coreai_opt_gpu.backend import BACKEND_ENV
from coreai_opt_gpu.engine.scalar import fast_mode_codes
from coreai_opt_gpu.kernels.kmeans_1d import Assign1dLaunch, assign_1d, lloyd_1d
from tests.test_kmeans_1d import QUALITY_BAR, cluster_scalar, optimum, student_t


def sorted_problem(g, m, k, weighted, seed=0):
    rng = np.random.default_rng(seed)
    values = np.sort(student_t((g, m), seed), 1)
    values[0, : m // 3] = values[0, 0]  # a run of ties
    weights = rng.random((g, m)) if weighted else np.ones((g, m))
    prefix_w, prefix_wx = reference.prefix_sums(values, weights)
    start = np.sort(rng.choice(values.ravel(), (g, k)), 1).astype(np.float64)
    start[-1, :] = start[-1, 0]  # all centroids equal: empty clusters keep their place
    return values, prefix_w, prefix_wx, start


@pytest.mark.parametrize("max_iter", [0, 1, 4, 100])
@pytest.mark.parametrize(
    ("g", "m", "k"),
    [(3, 97, 4), (2, 64, 16), (1, 5, 8), (4, 33, 1)],
    ids=["odd", "pow2", "k>m", "k=1"],
)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_lloyd_kernel_matches_twin_exactly(g, m, k, max_iter, weighted, device):
    arrays = sorted_problem(g, m, k, weighted)
    expected = reference.lloyd_1d(*arrays, max_iter)
    tensors = [torch.from_numpy(a).to(device) for a in arrays]
    got = lloyd_1d(*tensors, max_iter).cpu().numpy()
    assert np.array_equal(got, expected)


@pytest.mark.parametrize(
    "launch", [None, Assign1dLaunch(16, 1), Assign1dLaunch(128, 2)], ids=["auto", "16", "128"]
)
@pytest.mark.parametrize(
    ("g", "n", "k"),
    [(3, 100, 4), (2, 1000, 16), (1, 7, 256), (2, 0, 4)],
    ids=["odd", "k16", "k256", "empty"],
)
def test_assign_kernel_matches_twin_exactly(g, n, k, launch, device):
    x = student_t((g, n), seed=k)
    centroids = np.sort(student_t((g, k), seed=k + 1).astype(np.float64), 1)
    if n:
        x[0, 0] = (centroids[0, 0] + centroids[0, 1]) / 2  # on a boundary: the lower code
    out = torch.full((g, n), 255, dtype=torch.uint8, device=device)  # poisoned
    got = assign_1d(
        torch.from_numpy(x).to(device), torch.from_numpy(centroids).to(device), launch, out
    )
    assert np.array_equal(got.cpu().numpy(), reference.assign_1d(x, centroids))


@pytest.mark.parametrize("n_bits", [2, 4])
@pytest.mark.parametrize("precision", [None, 4], ids=["exact", "fast"])
def test_engine_on_triton_path_meets_quality_bar(n_bits, precision, monkeypatch):
    """The device path (torch rows + Triton kernels) on CPU tensors under the interpreter."""
    monkeypatch.setenv(BACKEND_ENV, "triton")
    x = student_t((2, 512), seed=n_bits)
    w = np.random.default_rng(n_bits).random((2, 512))
    lut, codes, inertia = cluster_scalar(x, 2**n_bits, w, precision)
    assert np.all(inertia <= QUALITY_BAR * optimum(x, w, 2**n_bits, precision))
    clustered = x if precision is None else fast_mode_codes(x, 4).astype(np.float32) / 1e4
    monkeypatch.setenv(BACKEND_ENV, "numpy")
    assert np.array_equal(codes, reference.assign_1d(clustered.astype(np.float32), lut))
