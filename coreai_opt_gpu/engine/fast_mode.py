"""coreai_opt's fast k-means mode as a table over the 65,536 fp16 bit patterns.

Fast mode clusters round(fp16(x) * 10^p) / 10^p (float32 arithmetic, as upstream) instead of
x. That value depends only on fp16(x), so every distinct rounded value gets a *slot*: slots rise
with the value, and one table maps each fp16 pattern (by its order-preserving 16-bit key) to
its slot. Histograms over slots replace sorting: their width is fixed by p alone (about 41K
slots for p = 4), never by the data, so nothing about a chunk has to be read back to size them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

import torch

from coreai_opt_gpu import ledger

FP16_MAX = 65504.0
FP16_KEYS = 1 << 16


def fast_mode_values(x: torch.Tensor, rounding_precision: int) -> torch.Tensor:
    """float32(round(fp16(x) * 10^p)) / 10^p, round half to even, in float32 arithmetic."""
    scale = struct.unpack("f", struct.pack("f", 10.0**rounding_precision))[0]  # float32(10^p)
    return torch.round(x.to(torch.float16).to(torch.float32) * scale) / scale


def fp16_of_keys(keys: torch.Tensor) -> torch.Tensor:
    """Order-preserving keys [K] int32 -> the fp16 values they stand for (inverse of the key
    map key = bits | 0x8000 for positive, ~bits & 0xFFFF for negative patterns)."""
    bits = torch.where(keys >= 0x8000, keys ^ 0x8000, ~keys & 0xFFFF)
    signed = torch.where(bits >= 0x8000, bits - 0x10000, bits).to(torch.int16)
    return signed.view(torch.float16)


@dataclass(frozen=True)
class FastModeTable:
    """key_to_slot [65536] int32 (fp16 key -> slot), slot_values [S] float32 ascending."""

    key_to_slot: torch.Tensor
    slot_values: torch.Tensor

    @property
    def slots(self) -> int:
        return self.slot_values.numel()


def _host_table(rounding_precision: int) -> FastModeTable:
    if not isinstance(rounding_precision, int) or not 0 <= rounding_precision <= 30:
        raise ValueError(
            f"rounding_precision={rounding_precision!r} is not supported; allowed: 0..30"
        )
    with ledger.host_work():
        return _build_table(rounding_precision)


@lru_cache(maxsize=16)
def _build_table(rounding_precision: int) -> FastModeTable:
    keys = torch.arange(FP16_KEYS, dtype=torch.int32)
    values = fast_mode_values(fp16_of_keys(keys).float(), rounding_precision)  # [65536]
    finite = torch.isfinite(fp16_of_keys(keys))
    first, last = 0x0400, 0xFBFF  # keys of -65504 and +65504: finite keys are contiguous
    assert bool(finite[first : last + 1].all()) and not bool(finite[:first].any())
    inner = values[first : last + 1]
    new_slot = torch.ones_like(inner, dtype=torch.int32)
    new_slot[1:] = (inner[1:] != inner[:-1]).to(torch.int32)  # -0.0 == 0.0: one slot
    slot = torch.cumsum(new_slot, 0, dtype=torch.int32) - 1
    key_to_slot = torch.empty(FP16_KEYS, dtype=torch.int32)
    key_to_slot[:first] = 0  # -inf and negative NaN patterns: never clustered (checked)
    key_to_slot[first : last + 1] = slot
    key_to_slot[last + 1 :] = slot[-1]
    slot_values = torch.empty(int(slot[-1]) + 1, dtype=torch.float32)
    slot_values[slot.long()] = inner + 0.0  # -0.0 and +0.0 share a slot: store +0.0
    return FastModeTable(key_to_slot, slot_values)


_device_tables: dict[tuple[int, str], FastModeTable] = {}


def fast_mode_table(rounding_precision: int, device: torch.device) -> FastModeTable:
    """The table for precision p on `device`, built once per process and uploaded once per
    device (the only host-to-device copy of the scalar engine, recorded in the ledger)."""
    key = (rounding_precision, str(device))
    table = _device_tables.get(key)
    if table is None:
        host = _host_table(rounding_precision)
        if torch.device(device).type == "cpu":
            table = host
        else:
            with ledger.upload("fast_mode_table", host.key_to_slot, host.slot_values):
                table = FastModeTable(host.key_to_slot.to(device), host.slot_values.to(device))
        _device_tables[key] = table
    return table
