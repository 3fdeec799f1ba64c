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


# The tiles the heuristic picks from (1024 codes per program, 8 per thread: 4096-code tiles
# took 130-190 registers on sm_90 and spilled at 64 x 64; these take 56-64): wide along the
# contiguous dimension when rows are long, taller for short rows (convolutions).
LUT_DEQUANT_TILES = (LutDequantLaunch(1, 1024, 4), LutDequantLaunch(4, 256, 4),
                     LutDequantLaunch(16, 64, 4))  # fmt: skip
PACKED_GROUPS = {1: (1, 8), 2: (1, 4), 3: (3, 8), 4: (1, 2), 6: (3, 4), 8: (1, 1)}  # bytes, codes


def lut_dequant_launch(v: int, m: int) -> LutDequantLaunch:
    """Pure heuristic: the widest menu tile whose row fits the codes per row (the narrowest
    tile for rows under 256 codes)."""
    del v  # rows only change how many programs there are
    for tile in LUT_DEQUANT_TILES:
        if m >= tile.block_m:
            return tile
    return LUT_DEQUANT_TILES[-1]


@triton.jit
def _packed_codes(idx_ptr, v, m0, mask_v, ROW_BYTES, N_BITS: tl.constexpr,
                  BLOCK_V: tl.constexpr, BLOCK_M: tl.constexpr):  # fmt: skip
    """Codes [BLOCK_V, BLOCK_M] of columns m0.. of rows v from little-endian bit streams:
    G_B bytes hold G_C whole codes (n_bits 1, 2, 4: one byte; 3, 6: three bytes), so the
    tile loads BLOCK_M / G_C groups of G_B contiguous bytes (vectorizable for one byte)
    instead of two bytes per code, and unpacks them with shifts."""
    if N_BITS == 3:
        G_B: tl.constexpr = 3
        G_C: tl.constexpr = 8
    elif N_BITS == 6:
        G_B: tl.constexpr = 3
        G_C: tl.constexpr = 4
    else:
        G_B: tl.constexpr = 1
        G_C: tl.constexpr = 8 // N_BITS
    GROUPS: tl.constexpr = BLOCK_M // G_C
    group = m0 // G_C + tl.arange(0, GROUPS).to(tl.int64)  # [GROUPS]
    row = v[:, None] * ROW_BYTES  # [BLOCK_V, 1]
    word = tl.zeros([BLOCK_V, GROUPS], tl.int32)
    for b in tl.static_range(G_B):
        byte = group * G_B + b
        ok = mask_v[:, None] & (byte < ROW_BYTES)[None, :]
        part = tl.load(idx_ptr + row + byte[None, :], mask=ok, other=0).to(tl.int32)
        word = word | (part << (8 * b))
    shift = (tl.arange(0, G_C) * N_BITS)[None, None, :]  # [1, 1, G_C]
    codes = (word[:, :, None] >> shift) & ((1 << N_BITS) - 1)  # [BLOCK_V, GROUPS, G_C]
    return tl.reshape(codes, [BLOCK_V, BLOCK_M])


@triton.jit
def _lut_dequant_kernel(
    idx_ptr,  # [V, ROW_BYTES] uint8: M = C * T codes per row, N_BITS bits each
    lut_ptr,  # [G0, G1, K, D] float32
    scale_ptr,  # [V * D] float32 (unused when HAS_SCALE is False)
    out_ptr,  # [V * D, M]
    V,
    M,
    T,
    K,
    D,
    rows_per_block,
    cols_per_block,
    G1,
    ROW_BYTES,
    HAS_SCALE: tl.constexpr,  # per-row scale multiply compiled in only when given
    N_BITS: tl.constexpr,  # 8: one byte per code; else a little-endian bit stream per row
    BLOCK_V: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """out[v*D + j, m] = lut[v // rows_per_block, (m // T) // cols_per_block, code[v, m], j]
    * scale[v*D + j]; codes >= K give NaN. fp32 math, one cast at the store. The loop over
    the D vector components is a runtime loop (one compiled kernel for every cluster_dim)."""
    pid_v = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1).to(tl.int64)
    v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # [BLOCK_V]
    m0 = pid_m * BLOCK_M
    m = m0 + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    mask_v = v < V
    mask = mask_v[:, None] & (m[None, :] < M)  # [BLOCK_V, BLOCK_M]
    if N_BITS == 8:
        code = tl.load(idx_ptr + v[:, None] * ROW_BYTES + m[None, :], mask=mask, other=0)
        code = code.to(tl.int32)
    else:
        code = _packed_codes(idx_ptr, v, m0, mask_v, ROW_BYTES, N_BITS, BLOCK_V, BLOCK_M)
    block = (v // rows_per_block)[:, None] * G1 + ((m // T) // cols_per_block)[None, :]
    lut_offset = ((block * K).to(tl.int32) + code) * D  # [BLOCK_V, BLOCK_M]: LUTs are small
    valid = mask & (code < K)
    out_rows = out_ptr + (v * D)[:, None] * M + m[None, :]  # row v*D, component 0
    for j in range(D):
        w = tl.load(lut_ptr + lut_offset + j, mask=valid, other=float("nan"))
        if HAS_SCALE:
            s = tl.load(scale_ptr + v * D + j, mask=mask_v, other=1.0)
            w = w * s[:, None]
        tl.store(out_rows + j * M, w.to(out_ptr.dtype.element_ty), mask=mask)


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
    """codes [V, ROW_BYTES] (one byte per code when n_bits == 8) -> out [V * D, C, T]. The
    LUT and scales (a few KB) are read as float32, so one kernel serves every LUT dtype."""
    v = codes.shape[0]
    g0, g1, k, d = lut.shape
    m = channels * taps
    launch = launch or lut_dequant_launch(v, m)
    if n_bits != 8 and launch.block_m % PACKED_GROUPS[n_bits][1]:
        raise ValueError(
            f"block_m={launch.block_m} must be a multiple of {PACKED_GROUPS[n_bits][1]} "
            f"for {n_bits}-bit packed codes"
        )
    codes, lut = codes.contiguous(), lut.to(torch.float32).contiguous()
    scale = row_scale.to(torch.float32).contiguous() if row_scale is not None else lut
    grid = (triton.cdiv(v, launch.block_v), triton.cdiv(m, launch.block_m))
    _lut_dequant_kernel[grid](
        codes, lut, scale, out, v, m, taps, k, d, v // g0, channels // g1, g1, codes.shape[1],
        HAS_SCALE=row_scale is not None, N_BITS=n_bits,
        BLOCK_V=launch.block_v, BLOCK_M=launch.block_m, num_warps=launch.num_warps,
    )  # fmt: skip


def variants() -> list:
    """Every configuration `lut_dequant` / `lut_dequant_packed` can launch: code width,
    per-row scale, menu tile, output dtype (LUT and scales are always read as float32)."""
    from coreai_opt_gpu.kernels.variants import FLOAT_TYPES, Variant

    out = []
    for n_bits in sorted(PACKED_GROUPS):
        for has_scale in (False, True):
            for tile in LUT_DEQUANT_TILES:
                for dtype, short in FLOAT_TYPES.items():
                    size = {"fp32": 4, "fp16": 2, "bf16": 2}[short]
                    out.append(
                        Variant(
                            _lut_dequant_kernel,
                            f"N_BITS={n_bits} HAS_SCALE={has_scale} "
                            f"tile={tile.block_v}x{tile.block_m} out={dtype}",
                            {"idx_ptr": "u8", "lut_ptr": "fp32", "scale_ptr": "fp32",
                             "out_ptr": short},
                            {"HAS_SCALE": has_scale, "N_BITS": n_bits,
                             "BLOCK_V": tile.block_v, "BLOCK_M": tile.block_m},
                            tile.num_warps,
                            n_bits / 8 + size,  # per output element, cluster_dim 1
                            per="output element (D=1)",
                            divisible=("M", "ROW_BYTES"),
                        )
                    )  # fmt: skip
    return out
