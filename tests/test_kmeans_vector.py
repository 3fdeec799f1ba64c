"""Vector k-means: `assign_update` kernel against its numpy twin, and the engine's behaviour.

Tolerance tiers: exact for codes and distances (same fp32 accumulation order); normalized
error for member sums (the kernel sums per program, then over programs); inertia against the
reference coreai_opt `_EfficientKMeans` for clustering quality.
"""

import numpy as np
import pytest
import torch

from coreai_opt_gpu import reference
from coreai_opt_gpu.backend import BACKEND_ENV
from coreai_opt_gpu.engine import cluster_blocks
from coreai_opt_gpu.engine.vector import cluster_vector
from coreai_opt_gpu.kernels.kmeans_vector import AssignUpdateLaunch, assign_update
from coreai_opt_gpu.reference import native


def vectors(shape, seed=0):
    return torch.from_numpy(
        (np.random.default_rng(seed).standard_t(4, size=shape) * 0.02).astype(np.float32)
    )


@pytest.mark.parametrize(
    "launch", [None, AssignUpdateLaunch(16, 1), AssignUpdateLaunch(64, 2)], ids=["auto", "16", "64"]
)
@pytest.mark.parametrize(
    ("g", "r", "n", "k", "d"),
    [
        (2, 3, 301, 16, 2),
        (1, 1, 64, 4, 8),
        (3, 2, 17, 256, 3),
        (1, 2, 5, 8, 4),
        (2, 1, 0, 4, 2),
    ],
    ids=["restarts", "d8", "k256", "n<k", "empty"],
)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_assign_update_matches_twin(g, r, n, k, d, weighted, launch, device, monkeypatch):
    monkeypatch.setenv(native.NATIVE_ENV, "0")  # the numpy twin itself (C: test_native_vector)
    x = vectors((g, n, d))
    centroids = vectors((g * r, k, d), seed=1)
    if n:
        centroids[0, 1] = x[0, 0]  # an exact hit and a duplicate centroid: ties go left
        centroids[0, 2] = x[0, 0]
    w = torch.rand(g, n, d, generator=torch.Generator().manual_seed(2)) if weighted else None
    if weighted and n:
        w[0, 0, 0] = 0.0  # a zero-weight component
    expected = reference.assign_update(
        x.numpy(), centroids.numpy(), None if w is None else w.numpy()
    )
    got = [
        t.cpu().numpy()
        for t in assign_update(
            x.to(device), centroids.to(device), None if w is None else w.to(device), launch
        )
    ]
    assert np.array_equal(got[0], expected[0])  # codes
    assert np.array_equal(got[1], expected[1])  # squared distances
    for ours, twin in zip(got[2:], expected[2:], strict=True):  # sums, counts
        scale = max(np.abs(twin).max(), 1e-12)
        assert np.abs(ours - twin).max() / scale <= 1e-5


def brute_inertia(x, lut, codes):
    return float(((x - lut[codes.long()]) ** 2).sum())


@pytest.mark.parametrize("d", [2, 4])
def test_engine_result_is_consistent(d):
    x = vectors((3, 512, d))
    result = cluster_blocks(x, 3, seed=0)
    assert result.lut.shape == (3, 8, d) and result.indices.shape == (3, 512)
    for g in range(3):
        lut, codes = result.lut[g], result.indices[g]
        nearest = torch.cdist(x[g].double(), lut.double()).argmin(1)
        assert torch.equal(codes.long(), nearest)  # every vector on its nearest centroid
        assert brute_inertia(x[g], lut, codes) == pytest.approx(float(result.inertia[g]), 1e-5)
        keys = lut[:, 0].tolist()
        assert keys == sorted(keys)  # lexicographic order, first component ascending


def test_reproducible_for_a_seed_and_under_torch_manual_seed():
    x = vectors((2, 3000, 2))
    first, second = cluster_blocks(x, 4, seed=7), cluster_blocks(x, 4, seed=7)
    assert torch.equal(first.lut, second.lut) and torch.equal(first.indices, second.indices)
    torch.manual_seed(3)
    third = cluster_blocks(x, 4)
    torch.manual_seed(3)
    fourth = cluster_blocks(x, 4)
    assert torch.equal(third.lut, fourth.lut)


def test_subsampled_restarts_end_at_a_full_block_fixed_point():
    """Restarts on a subsample, refined on every vector: a Lloyd fixed point of the block."""
    x = vectors((1, 6000, 2))
    settings = {"restarts": 4, "subsample": 1024, "seed": 1, "tol": 0.0, "max_iter": 2000}
    lut, codes, inertia = cluster_vector(x, 16, **settings)
    again = cluster_vector(x, 16, **settings)
    assert torch.equal(lut, again[0]) and torch.equal(codes, again[1])
    members = [x[0][codes[0] == k] for k in range(16)]
    means = torch.stack([m.double().mean(0) for m in members])
    torch.testing.assert_close(means, lut[0].double(), rtol=0, atol=1e-6 * float(x.std()))
    assert brute_inertia(x[0], lut[0], codes[0]) == pytest.approx(float(inertia[0]), 1e-5)


def test_few_distinct_vectors_pad_with_last_centroid():
    x = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]]])
    result = cluster_blocks(x, 3, seed=0)  # 8 centroids, 3 distinct vectors
    assert float(result.inertia[0]) == 0.0
    lut = result.lut[0]
    assert torch.equal(lut[result.indices[0].long()], x[0])
    assert lut[:3].tolist() == [[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]  # used, lexicographic
    assert torch.equal(lut[3:], lut[2].expand(5, 2))  # padding repeats the last centroid


def weighted_inertia(x, w, lut, codes):
    return float((w.double() * (x.double() - lut[codes.long()].double()) ** 2).sum())


def test_per_component_weights_give_a_weighted_fixed_point():
    """Per-component weights: every vector on its nearest centroid under the weighted
    distance, each centroid component the weighted mean of its members' components, and the
    reported inertia the weighted one."""
    x = vectors((2, 700, 2), seed=3)
    w = torch.rand(2, 700, 2, generator=torch.Generator().manual_seed(4)) + 0.05
    w[:, :, 1] *= 30.0  # the second component matters far more
    lut, codes, inertia = cluster_vector(x, 8, w, seed=2, tol=0.0, max_iter=2000)
    for g in range(2):
        distance = w[g, :, None].double() * (x[g, :, None].double() - lut[g].double()) ** 2
        assert torch.equal(codes[g].long(), distance.sum(-1).argmin(1))
        for c in codes[g].unique().tolist():
            members = codes[g] == c
            mean = (w[g][members].double() * x[g][members]).sum(0) / w[g][members].sum(0)
            torch.testing.assert_close(lut[g, c].double(), mean, rtol=0, atol=1e-6 * 0.02)
        got = weighted_inertia(x[g], w[g], lut[g], codes[g])
        assert got == pytest.approx(float(inertia[g]), 1e-5)
    plain = cluster_vector(x, 8, None, seed=2, tol=0.0, max_iter=2000)
    plain_weighted = sum(weighted_inertia(x[g], w[g], plain[0][g], plain[1][g]) for g in (0, 1))
    assert float(inertia.sum()) < plain_weighted  # the weighted objective is what it lowers


def test_the_kernel_refuses_shapes_it_would_misread(device):
    x = vectors((2, 30, 2)).to(device)
    with pytest.raises(ValueError, match=r"weights must be \[G, N, D\]"):
        assign_update(x, vectors((2, 4, 2)).to(device), torch.ones(2, 30, device=device))
    with pytest.raises(ValueError, match="multiple of G"):
        assign_update(x, vectors((3, 4, 2)).to(device))


def test_weights_of_the_wrong_shape_are_refused():
    x = vectors((2, 30, 2))
    with pytest.raises(ValueError, match=r"\[2, 30\] or \[2, 30, 2\], got \[2, 30, 3\]"):
        cluster_blocks(x, 2, torch.ones(2, 30, 3))
    with pytest.raises(ValueError, match=r"\[2, 60\], got \[2, 60, 1\]"):
        cluster_blocks(x.reshape(2, 60, 1), 2, torch.ones(2, 60, 1))
    with pytest.raises(ValueError, match="non-negative"):
        cluster_blocks(x, 2, -torch.ones(2, 30, 2))


def test_weights_steer_centroids():
    x = torch.tensor([[[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]]])
    w = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    result = cluster_blocks(x, 1, w, seed=0)
    assert result.lut[0].abs().max() < 1.0  # zero-weight vectors do not pull the centroids


def test_backends_reach_the_same_quality(monkeypatch):
    x = vectors((2, 400, 2), seed=4)
    monkeypatch.setenv(BACKEND_ENV, "numpy")
    on_numpy = cluster_blocks(x, 3, seed=5)
    monkeypatch.setenv(BACKEND_ENV, "triton")
    on_triton = cluster_blocks(x, 3, seed=5)
    torch.testing.assert_close(on_triton.inertia, on_numpy.inertia, rtol=1e-3, atol=0)


def test_inertia_not_worse_than_reference():
    """Against coreai_opt 0.3.0's `_EfficientKMeans` (5 restarts, 300 iterations) per block."""
    efficient = pytest.importorskip("coreai_opt.palettization.kmeans._efficient_kmeans")
    x = vectors((4, 4096, 2), seed=11)
    ours = cluster_blocks(x, 4, seed=0).inertia
    torch.manual_seed(0)
    theirs = [
        efficient._EfficientKMeans(n_clusters=16, init="kmeans++", n_init=5, max_iter=300)
        .fit(x[g])
        .inertia_
        for g in range(4)
    ]
    assert float(ours.sum()) <= float(sum(theirs))
