"""Vector k-means step: fused assignment and partial update, batched over blocks and restarts.

Twin: `coreai_opt_gpu.reference.kmeans_vector.assign_update`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class AssignUpdateLaunch:
    """BLOCK_N vectors per program (distances BLOCK_N x K_PAD live in registers)."""

    block_n: int
    num_warps: int


def assign_update_launch(n: int, k: int) -> AssignUpdateLaunch:
    """Pure heuristic: ~2K distances per program, from K alone (short blocks are masked), so
    there is one compiled kernel per K. (4K distances took 240-255 registers at K = 64..128
    and spilled on sm_90.)"""
    del n
    k_pad = triton.next_power_of_2(k)
    block_n = max(16, min(256, 2048 // k_pad))
    return AssignUpdateLaunch(block_n, num_warps=4 if block_n * k_pad >= 2048 else 2)


@triton.jit
def _assign_update_kernel(
    x_ptr,  # [G, N, D] float32
    centroids_ptr,  # [P, K, D] float32, P = G * R
    weights_ptr,  # [G, N, D] float32, per component (unused when HAS_WEIGHTS is False)
    codes_ptr,  # [P, N] uint8
    distances_ptr,  # [P, N] float32
    sums_ptr,  # [P, CHUNKS, K, D] float32: this program's weighted member sums
    counts_ptr,  # [P, CHUNKS, K, D] float32: their weights ([P, CHUNKS, K, 1] unweighted)
    N,
    K,
    R,
    CHUNKS,
    D,  # vector length (a runtime loop: one compiled kernel for every cluster_dim)
    K_PAD: tl.constexpr,
    HAS_WEIGHTS: tl.constexpr,  # sample weights loaded only when given
    BLOCK_N: tl.constexpr,
):
    """dist[n, k] = sum_d w[n, d] (x[n, d] - c[k, d])^2 (fp32, d in order; w = 1 unweighted);
    code = first argmin; partial sums over this program's BLOCK_N vectors:
    sums[k, d] = sum w[n, d] x[n, d] [code = k], counts[k, d] = sum w[n, d] [code = k]."""
    p = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    block = p // R
    n = chunk * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    k = tl.arange(0, K_PAD)  # [K_PAD]
    n_mask, k_mask = n < N, k < K
    x_row = x_ptr + block * N * D
    c_row = centroids_ptr + p * K * D
    w_row = weights_ptr + block * N * D
    dist = tl.zeros([BLOCK_N, K_PAD], tl.float32)
    for d in range(D):
        xd = tl.load(x_row + n * D + d, mask=n_mask, other=0.0).to(tl.float32)
        cd = tl.load(c_row + k * D + d, mask=k_mask, other=0.0).to(tl.float32)
        diff = xd[:, None] - cd[None, :]
        if HAS_WEIGHTS:
            wd = tl.load(w_row + n * D + d, mask=n_mask, other=0.0).to(tl.float32)
            dist += (diff * diff) * wd[:, None]
        else:
            dist += diff * diff
    dist = tl.where(k_mask[None, :], dist, float("inf"))
    code = tl.argmin(dist, axis=1, tie_break_left=True)  # [BLOCK_N]
    best = tl.min(dist, axis=1)
    tl.store(codes_ptr + p * N + n, code.to(tl.uint8), mask=n_mask)
    tl.store(distances_ptr + p * N + n, best, mask=n_mask)
    member = tl.where((code[:, None] == k[None, :]) & n_mask[:, None], 1.0, 0.0)
    out = (p * CHUNKS + chunk) * K
    if not HAS_WEIGHTS:  # one count per centroid, the same for every component
        tl.store(counts_ptr + out + k, tl.sum(member, axis=0), mask=k_mask)
    for d in range(D):
        xd = tl.load(x_row + n * D + d, mask=n_mask, other=0.0).to(tl.float32)
        if HAS_WEIGHTS:
            wd = tl.load(w_row + n * D + d, mask=n_mask, other=0.0).to(tl.float32)
            weighted = member * wd[:, None]
            tl.store(counts_ptr + (out + k) * D + d, tl.sum(weighted, axis=0), mask=k_mask)
            total = tl.sum(weighted * xd[:, None], axis=0)
        else:
            total = tl.sum(member * xd[:, None], axis=0)
        tl.store(sums_ptr + (out + k) * D + d, total, mask=k_mask)


def assign_update(
    x: torch.Tensor,
    centroids: torch.Tensor,
    weights: torch.Tensor | None = None,
    launch: AssignUpdateLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as the twin; sums and counts are reduced over programs in fixed order."""
    g, n, d = x.shape
    p, k, _ = centroids.shape
    if centroids.shape[2] != d or g == 0 or p % g or not 1 <= k <= 256:
        raise ValueError(
            f"assign_update takes x [G, N, D] (G >= 1) and centroids [P, K, D] with P a "
            f"multiple of G and 1 <= K <= 256; got {list(x.shape)} and {list(centroids.shape)}"
        )
    if weights is not None and weights.shape != x.shape:
        raise ValueError(f"weights must be [G, N, D] = {list(x.shape)}, got {list(weights.shape)}")
    launch = launch or assign_update_launch(n, k)
    chunks = triton.cdiv(n, launch.block_n)
    device = x.device
    codes = torch.empty((p, n), dtype=torch.uint8, device=device)
    distances = torch.empty((p, n), dtype=torch.float32, device=device)
    sums = torch.zeros((p, chunks, k, d), dtype=torch.float32, device=device)
    counted = d if weights is not None else 1  # unweighted: one count for every component
    counts = torch.zeros((p, chunks, k, counted), dtype=torch.float32, device=device)
    if n:
        w = weights.to(torch.float32).contiguous() if weights is not None else x
        _assign_update_kernel[(p, chunks)](
            x.to(torch.float32).contiguous(), centroids.to(torch.float32).contiguous(), w,
            codes, distances, sums, counts, n, k, p // g, chunks,
            D=d, K_PAD=triton.next_power_of_2(k), HAS_WEIGHTS=weights is not None,
            BLOCK_N=launch.block_n, num_warps=launch.num_warps,
            enable_fp_fusion=False,  # distances summed as the twin sums them (no FMA)
        )  # fmt: skip
    return codes, distances, sums.double().sum(1), counts.double().sum(1).expand(p, k, d)


def variants() -> list:
    """Every configuration `assign_update` can launch: K (2..256) and sample weights."""
    from coreai_opt_gpu.kernels.variants import Variant

    out = []
    for n_bits in range(1, 9):
        k = 2**n_bits
        launch = assign_update_launch(1 << 20, k)
        for weighted in (False, True):
            out.append(
                Variant(
                    _assign_update_kernel,
                    f"K={k} HAS_WEIGHTS={weighted} BLOCK_N={launch.block_n}",
                    {"x_ptr": "fp32", "centroids_ptr": "fp32", "weights_ptr": "fp32",
                     "codes_ptr": "u8", "distances_ptr": "fp32", "sums_ptr": "fp32",
                     "counts_ptr": "fp32"},
                    {"K_PAD": k, "HAS_WEIGHTS": weighted, "BLOCK_N": launch.block_n},
                    launch.num_warps,
                    8 + 1 + 4 + (8 if weighted else 0),  # x, code, distance, weights (D=2)
                    per="vector (D=2) and restart",
                    options={"enable_fp_fusion": False},
                )
            )  # fmt: skip
    return out
