"""The compiled configurations of a kernel: every combination its launcher can pick.

Each kernel module lists its `Variant`s next to its launch heuristics (from the same menus),
so the compile test and `scripts/kernel_report.py` build exactly what launches can run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FLOAT_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class Variant:
    """One configuration of one kernel.

    pointers: pointer argument -> Triton element type ("fp32", "u8", ...); every other
    argument not in constexprs is an i32 scalar. bytes_per_element: logical bytes the kernel
    moves per element of its output (or input, as `per` says), for the report.
    """

    kernel: Any
    label: str
    pointers: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int
    bytes_per_element: float
    per: str = "element"
    options: dict[str, Any] = field(default_factory=dict)
    divisible: tuple[str, ...] = ()  # i32 arguments taken as multiples of 16 (see attrs)

    @property
    def name(self) -> str:
        return self.kernel.__name__

    def signature(self) -> dict[str, str]:
        names = self.kernel.arg_names
        return {
            n: "constexpr"
            if n in self.constexprs
            else (f"*{self.pointers[n]}" if n in self.pointers else "i32")
            for n in names
        }

    def attrs(self) -> dict[tuple[int, ...], list]:
        """Pointer arguments are 16-byte aligned (torch allocations are) and the `divisible`
        sizes multiples of 16, as launches specialize them for LLM-shaped weights (a launch
        with other sizes compiles the same code with fewer vector accesses)."""
        names = self.kernel.arg_names
        return {
            (names.index(n),): [["tt.divisibility", 16]] for n in (*self.pointers, *self.divisible)
        }
