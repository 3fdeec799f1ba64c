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
    """[V, ceil(M * n_bits / 8)] uint8 -> [V, M] uint8 codes.

    n_bits dividing 8: each byte holds 8 / n_bits whole codes, split by shifts. Otherwise a
    code spans at most two bytes: code m = ((byte_b | byte_b+1 << 8) >> s) & mask with
    b, s = divmod(m * n_bits, 8)."""
    v = packed.shape[0]
    mask = (1 << n_bits) - 1
    if n_bits == 8:
        return np.ascontiguousarray(packed[:, :m])
    if 8 % n_bits == 0:
        per_byte = 8 // n_bits
        codes = np.empty((v, packed.shape[1], per_byte), np.uint8)  # [V, bytes, 8 / n_bits]
        for slot in range(per_byte):  # whole-array shifts: long inner loops
            np.right_shift(packed, np.uint8(slot * n_bits), out=codes[:, :, slot])
        codes &= np.uint8(mask)
        return np.ascontiguousarray(codes.reshape(v, -1)[:, :m])
    offsets = np.arange(m, dtype=np.int64) * n_bits
    first, shift = offsets >> 3, (offsets & 7).astype(np.uint16)
    wide = np.concatenate([packed, np.zeros((v, 1), np.uint8)], 1).astype(np.uint16)
    window = wide[:, first] | (wide[:, first + 1] << np.uint16(8))  # [V, M]
    return ((window >> shift) & np.uint16(mask)).astype(np.uint8)
