"""`lut_dequant` as a torch op: Triton kernel on CUDA, numpy twin elsewhere."""

from __future__ import annotations

import numpy as np
import torch

from coreai_opt_gpu import reference
from coreai_opt_gpu.backend import Backend, choose_backend

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LUT_DTYPES = OUT_DTYPES


def check_lut_dequant_inputs(
    indices: torch.Tensor, lut: torch.Tensor, row_scale: torch.Tensor | None, out_dtype: torch.dtype
) -> None:
    """Raise ValueError naming the argument, its value and what is allowed."""
    if indices.dtype != torch.uint8 or indices.dim() != 3:
        raise ValueError(
            f"indices must be uint8 [V, C, T], got {indices.dtype} {list(indices.shape)}"
        )
    if lut.dtype not in LUT_DTYPES or lut.dim() != 4:
        raise ValueError(
            f"lut must be [G0, G1, K, D] of float32/float16/bfloat16, got "
            f"{lut.dtype} {list(lut.shape)}"
        )
    if out_dtype not in OUT_DTYPES:
        raise ValueError(
            f"out_dtype={out_dtype} is not supported; allowed: float32, float16, bfloat16"
        )
    (v, c, _), (g0, g1, k, d) = indices.shape, lut.shape
    if min(g0, g1, k, d) < 1 or k > 256 or v % g0 or c % g1:
        raise ValueError(
            f"lut {list(lut.shape)} does not tile indices {list(indices.shape)}: "
            f"need V % G0 == 0, C % G1 == 0, 1 <= K <= 256, D >= 1"
        )
    if row_scale is not None and (
        row_scale.dim() != 1 or row_scale.numel() != v * d or row_scale.dtype not in LUT_DTYPES
    ):
        raise ValueError(
            f"row_scale must be a float vector of V * D = {v * d} entries, got "
            f"{row_scale.dtype} {list(row_scale.shape)}"
        )


def _host_float32(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).numpy()


@torch.library.custom_op("coreai_opt_gpu::lut_dequant", mutates_args=())
def _lut_dequant_op(
    indices: torch.Tensor,
    lut: torch.Tensor,
    row_scale: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    if choose_backend(indices, lut) == Backend.TRITON:
        from coreai_opt_gpu.kernels.lut_dequant import lut_dequant as triton_lut_dequant

        return triton_lut_dequant(indices, lut, row_scale, out_dtype)
    scale = None if row_scale is None else _host_float32(row_scale)
    out = reference.lut_dequant(indices.detach().cpu().numpy(), _host_float32(lut), scale)
    return torch.from_numpy(out).to(device=indices.device, dtype=out_dtype)


@_lut_dequant_op.register_fake
def _(indices, lut, row_scale, out_dtype):  # signature fixed by the op
    v, c, t = indices.shape
    return indices.new_empty((v * lut.shape[-1], c, t), dtype=out_dtype)


def lut_dequant(
    indices: torch.Tensor,
    lut: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Weight [V * D, C, T] from indices [V, C, T] (uint8) and LUT [G0, G1, K, D].

    Row v * D + j holds component j of vector row v, times row_scale[v * D + j] when given.
    Codes >= K decode to NaN. Runs Triton on CUDA tensors and numpy otherwise
    (COREAI_OPT_GPU_BACKEND forces one).
    """
    check_lut_dequant_inputs(indices, lut, row_scale, out_dtype)
    return _lut_dequant_op(indices, lut, row_scale, out_dtype)


PACKED_BITS = (1, 2, 3, 4, 6, 8)


@torch.library.custom_op("coreai_opt_gpu::lut_dequant_packed", mutates_args=())
def _lut_dequant_packed_op(
    packed: torch.Tensor,
    lut: torch.Tensor,
    row_scale: torch.Tensor | None,
    out_dtype: torch.dtype,
    n_bits: int,
    channels: int,
    taps: int,
) -> torch.Tensor:
    if choose_backend(packed, lut) == Backend.TRITON:
        from coreai_opt_gpu.kernels.lut_dequant import lut_dequant_packed as triton_packed

        return triton_packed(packed, lut, row_scale, out_dtype, n_bits, channels, taps)
    scale = None if row_scale is None else _host_float32(row_scale)
    out = reference.lut_dequant_packed(
        packed.detach().cpu().numpy(), _host_float32(lut), scale, n_bits, channels, taps
    )
    return torch.from_numpy(out).to(device=packed.device, dtype=out_dtype)


@_lut_dequant_packed_op.register_fake
def _(packed, lut, row_scale, out_dtype, n_bits, channels, taps):
    return packed.new_empty((packed.shape[0] * lut.shape[-1], channels, taps), dtype=out_dtype)


def lut_dequant_packed(
    packed: torch.Tensor,
    lut: torch.Tensor,
    row_scale: torch.Tensor | None,
    out_dtype: torch.dtype,
    n_bits: int,
    channels: int,
    taps: int,
) -> torch.Tensor:
    """`lut_dequant` from indices packed at n_bits per row: packed [V, ceil(C*T*n_bits/8)]
    uint8 (see `reference.packing`) -> weight [V * D, C, T]."""
    if n_bits not in PACKED_BITS:
        raise ValueError(f"n_bits={n_bits} is not supported; allowed: {PACKED_BITS}")
    row_bytes = reference.packed_row_bytes(channels * taps, n_bits)
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != row_bytes:
        raise ValueError(
            f"packed must be uint8 [V, {row_bytes}] for {channels} x {taps} codes "
            f"of {n_bits} bits, got {packed.dtype} {list(packed.shape)}"
        )
    check_lut_dequant_inputs(
        packed.new_empty((packed.shape[0], channels, taps)), lut, row_scale, out_dtype
    )
    return _lut_dequant_packed_op(packed, lut, row_scale, out_dtype, n_bits, channels, taps)
