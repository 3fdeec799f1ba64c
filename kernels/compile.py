"""Compile kernels for real GPUs without one, and read what the build uses.

`triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` runs the wheel's own ptxas;
`cuobjdump -res-usage` on the cubin gives registers, stack and local memory (spills). Used by the
compile test (every `Variant` for sm_80 and sm_90) and by `scripts/kernel_report.py`.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
from triton.compiler import ASTSource

from coreai_opt_gpu.kernels.variants import Variant

ARCHS = (80, 90)
# per SM: 64K registers, 64 warps, 32 blocks; shared memory for blocks (KB)
SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
APPROXIMATE_DIVISION = re.compile(r"\b(div\.(full|approx)\.f32|rcp\.approx\.f32)")
VECTOR_LOAD = re.compile(r"\bld\.global(\.\w+)*\.(v2|v4|b32|b64|u32|u64)\b")


SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass(frozen=True)
class Build:
    """What one compiled variant uses: registers per thread, stack frame and local memory
    (cuobjdump), spilled bytes (ptxas -v), shared memory (bytes per block)."""

    registers: int
    stack: int
    local: int
    spilled: int
    shared: int
    num_warps: int
    ptx: str

    @property
    def spills(self) -> bool:
        return self.spilled > 0 or self.local > 0

    def occupancy(self, arch: int) -> float:
        """Fraction of an SM's 64 warp slots that resident blocks of this kernel can fill."""
        regs_per_warp = -(-self.registers * 32 // 256) * 256  # allocated per warp, by 256
        blocks = min(
            32,
            64 // self.num_warps,
            (65536 // regs_per_warp) // self.num_warps if regs_per_warp else 32,
            SHARED_PER_SM[arch] // self.shared if self.shared else 32,
        )
        return blocks * self.num_warps / 64


def all_variants() -> list[Variant]:
    from coreai_opt_gpu.kernels import fake_quantize, kmeans_1d, kmeans_vector, lut_dequant

    return [
        *lut_dequant.variants(),
        *fake_quantize.variants(),
        *kmeans_vector.variants(),
        *kmeans_1d.variants(),
    ]


def cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def build(variant: Variant, arch: int) -> Build:
    """Compile `variant` for sm_<arch> and read its resource usage."""
    source = ASTSource(variant.kernel, variant.signature(), variant.constexprs, variant.attrs())
    options = {"num_warps": variant.num_warps, **variant.options}
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run(
            [cuobjdump(), "-res-usage", cubin.name], capture_output=True, text=True, check=True
        ).stdout
    fields = dict(re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", usage))
    return Build(
        registers=int(fields["REG"]),
        stack=int(fields["STACK"]),
        local=int(fields["LOCAL"]),
        spilled=spilled_bytes(compiled.asm["ptx"], arch, variant.options),
        shared=int(compiled.metadata.shared) + int(fields.get("SHARED", 0)),
        num_warps=variant.num_warps,
        ptx=compiled.asm["ptx"],
    )


def spilled_bytes(ptx: str, arch: int, options: dict) -> int:
    """Spill stores + loads that ptxas reports for this PTX, with Triton's own flags."""
    fmad = [] if options.get("enable_fp_fusion", True) else ["--fmad=false"]
    with tempfile.NamedTemporaryFile(suffix=".ptx", mode="w") as source:
        source.write(ptx)
        source.flush()
        log = subprocess.run(
            [get_ptxas(arch).path, "-v", "--regAllocOptLevel=2", *fmad,
             f"--gpu-name={sm_arch_from_capability(arch)}", source.name, "-o", os.devnull],
            capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
    return sum(int(a) + int(b) for a, b in SPILLS.findall(log))


def build_all(arch: int) -> list[tuple[Variant, Build | Exception]]:
    """Every variant for one arch (errors returned, not raised, so a report lists them)."""
    results = []
    for variant in all_variants():
        try:
            results.append((variant, build(variant, arch)))
        except Exception as error:
            results.append((variant, error))
    return results


BYTE_LOAD = re.compile(r"\bld\.global(\.\w+)*\.(b8|u8|s8)\b")


def summary(variant: Variant, arch: int) -> dict:
    """One row of the report (JSON-ready): resources, occupancy, and PTX facts the tests
    check (approximate float32 division; scalar byte loads)."""
    row = {"kernel": variant.name, "label": variant.label, "arch": arch}
    try:
        built = build(variant, arch)
    except Exception as error:  # reported per variant
        return {**row, "error": f"{type(error).__name__}: {error}"[:2000]}
    return {
        **row,
        "registers": built.registers,
        "stack": built.stack,
        "local": built.local,
        "spilled": built.spilled,
        "shared": built.shared,
        "num_warps": built.num_warps,
        "occupancy": built.occupancy(arch),
        "approximate_division": bool(APPROXIMATE_DIVISION.search(built.ptx)),
        "byte_loads": len(BYTE_LOAD.findall(built.ptx)),
        "bytes_per_element": variant.bytes_per_element,
        "per": variant.per,
    }


def _summary_at(index_arch: tuple[int, int]) -> dict:
    index, arch = index_arch
    return summary(all_variants()[index], arch)


def report(jobs: int | None = None) -> list[dict]:
    """Every variant for sm_80 and sm_90, compiled `jobs` at a time (processes)."""
    from concurrent.futures import ProcessPoolExecutor

    work = [(i, arch) for arch in ARCHS for i in range(len(all_variants()))]
    with ProcessPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        return list(pool.map(_summary_at, work, chunksize=4))


def main() -> None:
    """`python -m coreai_opt_gpu.kernels.compile [jobs]`: the report as JSON on stdout.
    Needs TRITON_INTERPRET unset (the interpreter replaces kernels by Python functions)."""
    import json
    import sys

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET: kernels compile only outside the interpreter")
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else None
    json.dump(report(jobs), sys.stdout)


if __name__ == "__main__":
    main()
