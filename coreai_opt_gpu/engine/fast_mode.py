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
    """The table, computed on the host in float32 arithmetic as `fast_mode_values` (numpy:
    a host-side constant, built in milliseconds; torch took 0.3 s for these 64K values, and
    a torch cross-check here cost 32 ms of every process's first prepare, so the agreement
    is a test: tests/test_kmeans_1d.py::test_fast_mode_table_is_fast_mode_values)."""
    import numpy as np

    keys = np.arange(FP16_KEYS, dtype=np.int64)
    bits = np.where(keys >= 0x8000, keys ^ 0x8000, ~keys & 0xFFFF).astype(np.uint16)
    halves = bits.view(np.float16)  # [65536] fp16 values in ascending key order
    first, last = 0x0400, 0xFBFF  # keys of -65504 and +65504: finite keys are contiguous
    finite = np.isfinite(halves)
    assert finite[first : last + 1].all() and not finite[:first].any()
    scale = np.float32(10.0**rounding_precision)
    inner = np.round(halves[first : last + 1].astype(np.float32) * scale) / scale
    slot = np.cumsum(np.concatenate([[0], inner[1:] != inner[:-1]])).astype(np.int32)
    key_to_slot = np.empty(FP16_KEYS, np.int32)
    key_to_slot[:first] = 0  # -inf and negative NaN patterns: never clustered (checked)
    key_to_slot[first : last + 1] = slot
    key_to_slot[last + 1 :] = slot[-1]
    slot_values = np.empty(int(slot[-1]) + 1, np.float32)
    slot_values[slot] = inner + np.float32(0.0)  # -0.0 and +0.0 share a slot: store +0.0
    return FastModeTable(torch.from_numpy(key_to_slot), torch.from_numpy(slot_values))


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
