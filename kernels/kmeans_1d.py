"""Scalar k-means kernels: Lloyd iterations on sorted rows, and nearest-centroid codes.

Twins: `coreai_opt_gpu.reference.lloyd_1d` and `coreai_opt_gpu.reference.assign_1d`.
Centroids, midpoints and prefix sums are float64, as in the twins, so results match bit for
bit: a centroid is a ratio of prefix-sum differences over a million-element block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class Assign1dLaunch:
    """BLOCK_N elements per program."""

    block_n: int
    num_warps: int


def assign_1d_launch(n: int) -> Assign1dLaunch:
    """Pure heuristic: up to 1024 elements per program."""
    block_n = min(triton.next_power_of_2(max(n, 1)), 1024)
    return Assign1dLaunch(block_n, num_warps=4 if block_n >= 512 else 1)


@triton.jit
def _count_at_most(row_ptr, bound, lane_mask, M, n_steps):
    """Per lane: #{values of the sorted row <= bound} by binary search, n_steps >= log2(M+1)."""
    lo = tl.zeros(bound.shape, tl.int64)
    hi = tl.zeros(bound.shape, tl.int64) + M
    for _ in range(n_steps):
        active = (lo < hi) & lane_mask
        mid = (lo + hi) // 2
        v = tl.load(row_ptr + mid, mask=active, other=0.0).to(tl.float64)
        right = v <= bound
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & (~right), mid, hi)
    return lo


@triton.jit
def _lloyd_1d_kernel(
    values_ptr,  # [G, M] float32, each row ascending
    prefix_w_ptr,  # [G, M+1] float64
    prefix_wx_ptr,  # [G, M+1] float64
    centroids_ptr,  # [G, K] float64: the start on entry, the result on exit
    M,
    K,
    max_iter,
    n_steps,
    K_PAD: tl.constexpr,  # lanes: one per centroid, a power of two
):
    """Per block: b_k = #{x <= (c_k-1 + c_k) / 2}, c_k <- (Swx[b_k, b_k+1) / Sw[...]) when
    Sw > 0, until no centroid moves or max_iter updates."""
    g = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, K_PAD)  # [K_PAD]
    valid = k < K
    row = values_ptr + g * M
    cent = centroids_ptr + g * K
    prefix_w = prefix_w_ptr + g * (M + 1)
    prefix_wx = prefix_wx_ptr + g * (M + 1)
    has_lower = valid & (k >= 1)
    has_upper = (k + 1) < K
    iteration = tl.full((), 0, tl.int32)
    moved = tl.full((), 1, tl.int32)
    while (iteration < max_iter) & (moved > 0):
        c = tl.load(cent + k, mask=valid, other=0.0)
        c_below = tl.load(cent + k - 1, mask=has_lower, other=0.0)
        c_above = tl.load(cent + k + 1, mask=has_upper, other=0.0)
        lower = _count_at_most(row, (c_below + c) * 0.5, has_lower, M, n_steps)  # [K_PAD]
        upper = _count_at_most(row, (c + c_above) * 0.5, has_upper, M, n_steps)
        upper = tl.where(has_upper, upper, M)
        sw = tl.load(prefix_w + upper, mask=valid, other=0.0) - tl.load(
            prefix_w + lower, mask=valid, other=0.0
        )
        swx = tl.load(prefix_wx + upper, mask=valid, other=0.0) - tl.load(
            prefix_wx + lower, mask=valid, other=0.0
        )
        updated = tl.where(sw > 0, swx / tl.where(sw > 0, sw, 1.0), c)
        moved = tl.sum(((updated != c) & valid).to(tl.int32), axis=0)
        tl.debug_barrier()  # every lane has read the old centroids
        tl.store(cent + k, updated, mask=valid)
        tl.debug_barrier()  # the new centroids are visible to every lane
        iteration += 1


def lloyd_1d(
    values: torch.Tensor,
    prefix_w: torch.Tensor,
    prefix_wx: torch.Tensor,
    centroids: torch.Tensor,
    max_iter: int,
) -> torch.Tensor:
    """values [G, M] f32 sorted, prefix sums [G, M+1] f64, start [G, K] -> centroids [G, K] f64."""
    g, m = values.shape
    k = centroids.shape[1]
    out = centroids.to(torch.float64).contiguous().clone()
    if g == 0 or max_iter <= 0:
        return out
    _lloyd_1d_kernel[(g,)](
        values.contiguous(), prefix_w.contiguous(), prefix_wx.contiguous(), out,
        m, k, max_iter, max(1, m.bit_length()),
        K_PAD=triton.next_power_of_2(k), num_warps=1 if k <= 64 else 4,
    )  # fmt: skip
    return out


@triton.jit
def _assign_1d_kernel(
    x_ptr,  # [G, N] float32
    centroids_ptr,  # [G, K] float64, ascending
    codes_ptr,  # [G, N] uint8
    N,
    K,
    BLOCK_N: tl.constexpr,
):
    """codes = #{k : x > (c_k + c_k+1) / 2}, compared in float64 (ties: the lower code)."""
    g = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    mask = n < N
    x = tl.load(x_ptr + g * N + n, mask=mask, other=0.0).to(tl.float64)
    cent = centroids_ptr + g * K
    code = tl.zeros([BLOCK_N], tl.int32)
    for k in range(K - 1):
        boundary = (tl.load(cent + k) + tl.load(cent + k + 1)) * 0.5
        code += (x > boundary).to(tl.int32)
    tl.store(codes_ptr + g * N + n, code.to(tl.uint8), mask=mask)


def assign_1d(
    x: torch.Tensor,
    centroids: torch.Tensor,
    launch: Assign1dLaunch | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [G, N] float32, centroids [G, K] ascending -> codes [G, N] uint8 (`out` if given)."""
    g, n = x.shape
    if out is None:
        out = torch.empty((g, n), dtype=torch.uint8, device=x.device)
    if out.numel() == 0:
        return out
    launch = launch or assign_1d_launch(n)
    grid = (g, triton.cdiv(n, launch.block_n))
    _assign_1d_kernel[grid](
        x.to(torch.float32).contiguous(), centroids.to(torch.float64).contiguous(), out,
        n, centroids.shape[1], BLOCK_N=launch.block_n, num_warps=launch.num_warps,
    )  # fmt: skip
    return out
