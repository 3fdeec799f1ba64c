"""Fused LUT-gather dequant: uint8 indices (plain or bit-packed) + per-block LUT (+ row
scale) -> weight."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class LutDequantLaunch:
    """Tile of one program: BLOCK_V index rows x BLOCK_M index columns."""

    block_v: int
    block_m: int
    num_warps: int


def lut_dequant_launch(v: int, m: int) -> LutDequantLaunch:
    """Pure heuristic: wide tiles along the contiguous dim, ~4K indices per program."""
    block_m = min(triton.next_power_of_2(max(m, 1)), 1024)
    block_v = max(1, min(triton.next_power_of_2(max(v, 1)), 4096 // block_m))
    return LutDequantLaunch(block_v, block_m, num_warps=4 if block_v * block_m >= 2048 else 2)


@triton.jit
def _lut_dequant_kernel(
    idx_ptr,  # [V, ROW_BYTES] uint8: M = C * T codes per row, N_BITS bits each
    lut_ptr,  # [G0, G1, K, D]
    scale_ptr,  # [V * D] (unused when HAS_SCALE is False)
    out_ptr,  # [V * D, M]
    V,
    M,
    T,
    K,
    rows_per_block,
    cols_per_block,
    G1,
    ROW_BYTES,
    D: tl.constexpr,  # cluster_dim: the loop over vector components is unrolled
    HAS_SCALE: tl.constexpr,  # per-row scale multiply compiled in only when given
    N_BITS: tl.constexpr,  # 8: one byte per code; else a little-endian bit stream per row
    BLOCK_V: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """out[v*D + j, m] = lut[v // rows_per_block, (m // T) // cols_per_block, code[v, m], j]
    * scale[v*D + j]; codes >= K give NaN. fp32 math, one cast at the store."""
    pid_v = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1).to(tl.int64)
    v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # [BLOCK_V]
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    mask = (v[:, None] < V) & (m[None, :] < M)  # [BLOCK_V, BLOCK_M]
    if N_BITS == 8:
        code = tl.load(idx_ptr + v[:, None] * ROW_BYTES + m[None, :], mask=mask, other=0)
        code = code.to(tl.int64)
    else:  # a code may straddle two bytes: read both, shift, mask
        bit = m * N_BITS  # [BLOCK_M]
        byte = v[:, None] * ROW_BYTES + (bit // 8)[None, :]
        has_next = mask & ((bit // 8 + 1) < ROW_BYTES)[None, :]
        low = tl.load(idx_ptr + byte, mask=mask, other=0).to(tl.int64)
        high = tl.load(idx_ptr + byte + 1, mask=has_next, other=0).to(tl.int64)
        code = ((low | (high << 8)) >> (bit % 8)[None, :]) & ((1 << N_BITS) - 1)
    block = (v // rows_per_block)[:, None] * G1 + ((m // T) // cols_per_block)[None, :]
    lut_offset = (block * K + code) * D  # [BLOCK_V, BLOCK_M]
    valid = mask & (code < K)
    for j in tl.static_range(D):
        w = tl.load(lut_ptr + lut_offset + j, mask=valid, other=float("nan")).to(tl.float32)
        row = v * D + j  # [BLOCK_V]
        if HAS_SCALE:
            s = tl.load(scale_ptr + row, mask=v < V, other=1.0).to(tl.float32)
            w = w * s[:, None]
        tl.store(out_ptr + row[:, None] * M + m[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)


def lut_dequant(
    indices: torch.Tensor,
    lut: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    launch: LutDequantLaunch | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """indices [V, C, T] uint8, lut [G0, G1, K, D], row_scale [V * D] -> [V * D, C, T].

    Same contract as `coreai_opt_gpu.reference.lut_dequant`; `launch` forces a tile shape,
    `out` (contiguous [V * D, C, T]) receives the result (tests pass it NaN-poisoned).
    """
    v, c, t = indices.shape
    d = lut.shape[-1]
    if out is None:
        out = torch.empty((v * d, c, t), dtype=out_dtype, device=indices.device)
    m = c * t
    if out.numel() == 0:
        return out
    _launch(indices.reshape(v, m), lut, row_scale, out, 8, c, t, launch)
    return out


def lut_dequant_packed(
    packed: torch.Tensor,
    lut: torch.Tensor,
    row_scale: torch.Tensor | None,
    out_dtype: torch.dtype,
    n_bits: int,
    channels: int,
    taps: int,
    launch: LutDequantLaunch | None = None,
) -> torch.Tensor:
    """`lut_dequant` on indices packed at n_bits per row: packed [V, ceil(C*T*n_bits/8)].

    Same contract as `coreai_opt_gpu.reference.lut_dequant_packed`.
    """
    v, d = packed.shape[0], lut.shape[-1]
    out = torch.empty((v * d, channels, taps), dtype=out_dtype, device=packed.device)
    if out.numel():
        _launch(packed, lut, row_scale, out, n_bits, channels, taps, launch)
    return out


def _launch(
    codes: torch.Tensor,
    lut: torch.Tensor,
    row_scale: torch.Tensor | None,
    out: torch.Tensor,
    n_bits: int,
    channels: int,
    taps: int,
    launch: LutDequantLaunch | None,
) -> None:
    """codes [V, ROW_BYTES] (one byte per code when n_bits == 8) -> out [V * D, C, T]."""
    v = codes.shape[0]
    g0, g1, k, d = lut.shape
    m = channels * taps
    launch = launch or lut_dequant_launch(v, m)
    codes, lut = codes.contiguous(), lut.contiguous()
    scale = row_scale.contiguous() if row_scale is not None else lut  # dummy pointer
    grid = (triton.cdiv(v, launch.block_v), triton.cdiv(m, launch.block_m))
    _lut_dequant_kernel[grid](
        codes, lut, scale, out, v, m, taps, k, v // g0, channels // g1, g1, codes.shape[1],
        D=d, HAS_SCALE=row_scale is not None, N_BITS=n_bits,
        BLOCK_V=launch.block_v, BLOCK_M=launch.block_m, num_warps=launch.num_warps,
    )  # fmt: skip
