"""numpy twin of `coreai_opt_gpu.kernels.lut_dequant`: the CPU path and the test oracle."""

from __future__ import annotations

import numpy as np

from coreai_opt_gpu.reference.packing import unpack_indices


def lut_dequant(
    indices: np.ndarray, lut: np.ndarray, row_scale: np.ndarray | None = None
) -> np.ndarray:
    """Gather LUT entries into the weight layout, in float32.

    indices: [V, C, T] uint8; lut: [G0, G1, K, D]; row_scale: [V * D] or None.
    Element (v, c, t) uses block (v // (V / G0), c // (C / G1)); vector component j lands on
    row v * D + j, multiplied by row_scale[v * D + j]. Codes >= K decode to NaN.
    Returns [V * D, C, T] float32.
    """
    v, c, t = indices.shape
    g0, g1, k, d = lut.shape
    block0 = np.arange(v) // (v // g0)  # [V]
    block1 = np.arange(c) // (c // g1)  # [C]
    table = lut.astype(np.float32)
    if indices.size and int(indices.max()) >= k:  # codes >= K decode to NaN: one extra entry
        nan = np.full((g0, g1, 1, d), np.nan, np.float32)
        table = np.concatenate([table, nan], 2)
        indices = np.minimum(indices, k)
    width = table.shape[2]
    # flat entry of (block, code) is (block0 * G1 + block1) * width + code
    base = (block0[:, None] * g1 + block1[None, :]) * width  # [V, C]
    flat = indices.astype(np.intp) + base[:, :, None]  # [V, C, T]
    planes = table.reshape(-1, d)  # [G0 * G1 * width, D]
    if d == 1:
        out = planes[:, 0].take(flat)  # [V, C, T]
    else:
        out = planes.take(flat, axis=0).transpose(0, 3, 1, 2).reshape(v * d, c, t)
    if row_scale is not None:
        out = out * row_scale.astype(np.float32)[:, None, None]
    return out


def lut_dequant_packed(
    packed: np.ndarray,
    lut: np.ndarray,
    row_scale: np.ndarray | None,
    n_bits: int,
    channels: int,
    taps: int,
) -> np.ndarray:
    """`lut_dequant` on indices packed at n_bits per row ([V, ceil(C * T * n_bits / 8)]
    uint8, see `reference.packing`). Returns [V * D, C, T] float32."""
    codes = unpack_indices(packed, n_bits, channels * taps)
    return lut_dequant(codes.reshape(len(packed), channels, taps), lut, row_scale)
