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
    codes = indices.astype(np.int64)
    gathered = lut.astype(np.float32)[
        block0[:, None, None], block1[None, :, None], np.minimum(codes, k - 1)
    ]  # [V, C, T, D]
    gathered[codes >= k] = np.nan
    out = gathered.transpose(0, 3, 1, 2).reshape(v * d, c, t)  # row = v * D + j
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
