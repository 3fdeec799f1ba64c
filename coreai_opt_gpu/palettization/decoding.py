"""Decode a palettized weight through the dequant ops, in any floating dtype.

`decode_weight` returns the weight [O, C, *kernel] from indices [V, C, T] uint8 (or, with
`n_bits`, rows bit-packed at n_bits: [V, ceil(C*T*n_bits/8)]), the LUT [G, K, D] and the
per-row scale [O] (or None). The ops compute in float32 and store float32, float16 or bfloat16;
any other dtype (float64) is the float32 result cast once, which is exact.

On the device (Triton) and while torch.compile / torch.export trace, it is one op call. On the
host the numpy twins widen every index to int64 (about 25 bytes of temporaries per weight
element), so the weight is decoded in runs of whole block rows of about `HOST_DECODE_VALUES`
elements each, written into one output: the temporaries stay bounded whatever the layer.
"""

from __future__ import annotations

import torch

from coreai_opt_gpu.backend import Backend, choose_backend
from coreai_opt_gpu.ops import lut_dequant, lut_dequant_packed
from coreai_opt_gpu.palettization.layout import PaletteLayout

OP_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the dequant ops store
HOST_DECODE_VALUES = 1 << 20  # decoded elements per op call on the host path


def decode_weight(
    layout: PaletteLayout,
    indices: torch.Tensor,
    lut: torch.Tensor,
    row_scale: torch.Tensor | None,
    dtype: torch.dtype,
    n_bits: int | None = None,
) -> torch.Tensor:
    """The palettized weight, shaped like the original, in `dtype` (see module docstring)."""
    op_dtype = dtype if dtype in OP_DTYPES else torch.float32
    lut4 = layout.lut_view(lut)  # [G0, G1, K, D]
    v, c, t = layout.index_shape
    d = layout.cluster_dim
    rows = _rows_per_call(layout, indices, lut4)
    if rows >= v:
        decoded = _decode_rows(layout, indices, lut4, row_scale, op_dtype, n_bits)
    else:
        decoded = torch.empty((v * d, c, t), dtype=op_dtype, device=indices.device)
        per_block = v // layout.blocks_axis0
        for start in range(0, v, rows):
            stop = min(v, start + rows)
            part = _decode_rows(
                layout,
                indices[start:stop],
                lut4[start // per_block : -(-stop // per_block)],
                None if row_scale is None else row_scale[start * d : stop * d],
                op_dtype,
                n_bits,
            )
            decoded[start * d : stop * d].copy_(part)
    return decoded.reshape(layout.shape).to(dtype)


def _rows_per_call(layout: PaletteLayout, indices: torch.Tensor, lut4: torch.Tensor) -> int:
    """Index rows per op call: all of them on the device or while tracing; on the host whole
    rows of blocks (V / G0 index rows each) adding up to about HOST_DECODE_VALUES elements."""
    v, c, t = layout.index_shape
    if torch.compiler.is_compiling() or choose_backend(indices, lut4) == Backend.TRITON:
        return v
    per_block = v // layout.blocks_axis0
    per_row = c * t * layout.cluster_dim
    return max(per_block, HOST_DECODE_VALUES // max(per_row, 1) // per_block * per_block)


def _decode_rows(
    layout: PaletteLayout,
    indices: torch.Tensor,
    lut4: torch.Tensor,
    row_scale: torch.Tensor | None,
    op_dtype: torch.dtype,
    n_bits: int | None,
) -> torch.Tensor:
    """[rows * D, C, T] from index rows (unpacked or packed) and their rows of blocks."""
    if n_bits is None:
        return lut_dequant(indices, lut4, row_scale, op_dtype)
    _, channels, taps = layout.index_shape
    return lut_dequant_packed(indices, lut4, row_scale, op_dtype, n_bits, channels, taps)
