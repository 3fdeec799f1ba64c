"""Batched scalar k-means (numpy CPU path) and the engine entry point.

Tolerance tiers: exact for searches and assignments; Lloyd fixed-point identities to float
rounding; relative-MSE bound against the Lloyd-Max optimum for clustering quality.
"""

import numpy as np
import pytest
import torch

from coreai_opt_gpu.engine import cluster_blocks
from coreai_opt_gpu.reference import batched_searchsorted, kmeans_1d

# Lloyd-Max optimum of the relative MSE for a unit Gaussian with 16 levels (Max, 1960).
GAUSSIAN_16_LEVEL_OPTIMUM = 0.009497


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
    assert np.array_equal(batched_searchsorted(rows, values, side), expected)


def assert_lloyd_fixed_point(x, w, lut, indices, inertia):
    nearest = np.abs(x[:, :, None] - lut[:, None, :]).argmin(axis=2)
    distance = np.abs(x - np.take_along_axis(lut, indices.astype(np.int64), 1))
    best = np.abs(x - np.take_along_axis(lut, nearest, 1))
    assert np.array_equal(distance, best)  # every point on a nearest centroid
    assert np.all(np.diff(lut, axis=1) >= 0)  # ascending
    for g in range(x.shape[0]):
        for k in np.unique(indices[g]):
            members = indices[g] == k
            mean = np.average(x[g, members], weights=w[g, members])
            assert abs(mean - lut[g, k]) <= 1e-5 * max(1.0, abs(mean))
    recomputed = np.sum(w * (x - np.take_along_axis(lut, indices.astype(np.int64), 1)) ** 2, 1)
    np.testing.assert_allclose(inertia, recomputed, rtol=1e-12)


@pytest.mark.parametrize("k", [2, 4, 16])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_kmeans_1d_converges_to_a_lloyd_fixed_point(k, weighted):
    rng = np.random.default_rng(k)
    x = rng.standard_t(4, size=(5, 300)).astype(np.float32)
    w = rng.random((5, 300)) + 0.1 if weighted else np.ones((5, 300))
    lut, indices, inertia = kmeans_1d(x, k, w if weighted else None, max_iter=1000)
    assert lut.shape == (5, k) and lut.dtype == np.float32 and indices.dtype == np.uint8
    assert_lloyd_fixed_point(x, w, lut, indices, inertia)


def test_quality_on_gaussian_blocks():
    x = np.random.default_rng(0).standard_normal((8, 8192)).astype(np.float32)
    _, _, inertia = kmeans_1d(x, 16)
    relative_mse = inertia.sum() / np.sum((x - x.mean(1, keepdims=True)) ** 2)
    assert relative_mse <= 1.05 * GAUSSIAN_16_LEVEL_OPTIMUM


def test_few_distinct_values_are_exact_and_weights_steer():
    x = np.array([[1.0, 1.0, 2.0, 5.0, 5.0, 5.0]], np.float32)
    lut, indices, inertia = kmeans_1d(x, 4)
    assert inertia[0] == 0.0
    assert np.array_equal(np.take_along_axis(lut, indices.astype(np.int64), 1), x)
    outlier = np.array([[0.0, 0.1, 0.2, 10.0]], np.float32)
    ignore_outlier = np.array([[1.0, 1.0, 1.0, 0.0]])
    lut, _, _ = kmeans_1d(outlier, 2, ignore_outlier)
    assert lut[0, 1] < 1.0  # the zero-weight outlier does not pull a centroid


def test_deterministic():
    x = np.random.default_rng(3).standard_t(4, size=(4, 500)).astype(np.float32)
    first, second = kmeans_1d(x, 8), kmeans_1d(x, 8)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)


def test_engine_shapes_and_batching():
    blocks = torch.randn(6, 64, 1)
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
        (torch.zeros(1, 4, 2), 2, "cluster_dim=2"),
    ],
)
def test_engine_rejects_bad_input(blocks, n_bits, message):
    with pytest.raises(ValueError, match=message):
        cluster_blocks(blocks, n_bits)
    with pytest.raises(ValueError, match="non-negative"):
        cluster_blocks(torch.zeros(1, 4, 1), 2, weights=-torch.ones(1, 4))
