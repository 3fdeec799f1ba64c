"""Index packing: n_bits per index, a little-endian bit stream per row (numpy reference).

Row v of M indices takes ceil(M * n_bits / 8) bytes; index m occupies bits
[m * n_bits, (m + 1) * n_bits) of the row's stream, bit k being bit k % 8 of byte k // 8.
n_bits = 8 is the plain one-byte-per-index layout.
"""

from __future__ import annotations

import numpy as np


def packed_row_bytes(m: int, n_bits: int) -> int:
    """Bytes of one packed row of m indices."""
    return (m * n_bits + 7) // 8


def pack_indices(indices: np.ndarray, n_bits: int) -> np.ndarray:
    """[V, M] uint8 codes (< 2^n_bits) -> [V, ceil(M * n_bits / 8)] uint8."""
    v, m = indices.shape
    if np.any(indices >> n_bits):
        raise ValueError(f"indices do not fit in n_bits={n_bits} (max {int(indices.max())})")
    bits = (indices[..., None] >> np.arange(n_bits, dtype=np.uint8)) & 1  # [V, M, n_bits]
    stream = np.zeros((v, packed_row_bytes(m, n_bits) * 8), np.uint8)
    stream[:, : m * n_bits] = bits.reshape(v, m * n_bits)
    return np.packbits(stream, axis=1, bitorder="little")


def unpack_indices(packed: np.ndarray, n_bits: int, m: int) -> np.ndarray:
    """[V, ceil(M * n_bits / 8)] uint8 -> [V, M] uint8 codes."""
    v = packed.shape[0]
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : m * n_bits]
    weights = (1 << np.arange(n_bits)).astype(np.uint16)
    return (bits.reshape(v, m, n_bits).astype(np.uint16) * weights).sum(-1).astype(np.uint8)
