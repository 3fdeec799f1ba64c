"""The decoded-weight cache of fake-palettized weights: one byte budget for the process.

Outside training, a `FakePalettize` weight depends only on its LUT, indices and scales, so its
decoded form can be kept and served again. All of them share one least-recently-used cache of
at most `decode_cache_budget()` bytes (decoded tensors on any device, counted at their size):

- default `DEFAULT_BUDGET` (32 MiB): a small model (about 8M float32 parameters) runs its
  fake-palettized forward at the speed of the plain layers after the first one; an LLM-sized
  layer (4096 x 4096 in float32 is 64 MiB, in bf16 32 MiB) is decoded at each access, so the
  resident memory after a forward stays at the prepared model's (measured in
  tests/test_memory.py against coreai_opt, which never caches);
- `COREAI_OPT_GPU_DECODE_CACHE_BYTES` (read on first use) or `set_decode_cache_budget(n)`
  change it; 0 turns caching off. Anything but an integer >= 0 is an error.

A weight larger than the budget is decoded on every access; storing one evicts the least
recently used others until it fits. `clear_decode_cache()` drops everything.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from typing import Any

import torch

BUDGET_ENV = "COREAI_OPT_GPU_DECODE_CACHE_BYTES"
DEFAULT_BUDGET = 32 * 2**20


def _checked_budget(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"{what} must be a whole number of bytes >= 0 (0 turns the decoded-weight cache "
            f"off), got {value!r}"
        )
    return value


def _budget_from_environment() -> int:
    text = os.environ.get(BUDGET_ENV)
    if text is None or not text.strip():
        return DEFAULT_BUDGET
    try:
        value = int(text.strip())
    except ValueError:
        value = text
    return _checked_budget(value, f"{BUDGET_ENV}={text!r}")


class DecodeCache:
    """Byte-bounded LRU over owners (modules) that each hold at most one decoded tensor.

    The tensor lives on its owner (`owner._decoded = (key, tensor)`), so it goes when the
    owner goes; the cache keeps the order and the byte count (weak references only).
    """

    def __init__(self) -> None:
        self._budget: int | None = None
        self._entries: OrderedDict[int, tuple[weakref.ref, int]] = OrderedDict()
        self._used = 0

    @property
    def budget(self) -> int:
        if self._budget is None:
            self._budget = _budget_from_environment()
        return self._budget

    @budget.setter
    def budget(self, value: int) -> None:
        self._budget = _checked_budget(value, "the decoded-weight cache budget")
        self._evict_to(self._budget)

    @property
    def used(self) -> int:
        """Bytes of decoded tensors held now."""
        return self._used

    def lookup(self, owner: Any, key: tuple) -> torch.Tensor | None:
        """The owner's decoded tensor if it was stored under `key` (and not evicted)."""
        held = getattr(owner, "_decoded", None)
        if held is None or held[0] != key or id(owner) not in self._entries:
            return None
        self._entries.move_to_end(id(owner))
        return held[1]

    def store(self, owner: Any, key: tuple, tensor: torch.Tensor) -> None:
        """Keep `tensor` as the owner's decoded tensor if it fits the budget."""
        self.drop(owner)
        size = tensor.numel() * tensor.element_size()
        if size > self.budget:
            return
        self._evict_to(self.budget - size)
        owner_id = id(owner)

        def forget(ref: weakref.ref, owner_id: int = owner_id) -> None:
            entry = self._entries.get(owner_id)
            if entry is not None and entry[0] is ref:
                self._entries.pop(owner_id)
                self._used -= entry[1]

        owner._decoded = (key, tensor)
        self._entries[owner_id] = (weakref.ref(owner, forget), size)
        self._used += size

    def drop(self, owner: Any) -> None:
        """Forget the owner's decoded tensor."""
        entry = self._entries.pop(id(owner), None)
        if entry is not None:
            self._used -= entry[1]
        if getattr(owner, "_decoded", None) is not None:
            owner._decoded = None

    def clear(self) -> None:
        for owner_id in list(self._entries):
            self._evict(owner_id)

    def _evict_to(self, limit: int) -> None:
        while self._entries and self._used > limit:
            self._evict(next(iter(self._entries)))

    def _evict(self, owner_id: int) -> None:
        ref, size = self._entries.pop(owner_id)
        self._used -= size
        owner = ref()
        if owner is not None:
            owner._decoded = None


CACHE = DecodeCache()


def decode_cache_budget() -> int:
    """Bytes the decoded-weight cache may hold (see the module docstring)."""
    return CACHE.budget


def set_decode_cache_budget(nbytes: int) -> None:
    """Set the decoded-weight cache budget in bytes (0: off); evicts down to it now."""
    CACHE.budget = nbytes


def decode_cache_bytes() -> int:
    """Bytes of decoded weights the cache holds now."""
    return CACHE.used


def clear_decode_cache() -> None:
    """Drop every cached decoded weight."""
    CACHE.clear()
