"""Cost model: project the GPU time of a prepare from its launch ledger.

    python -m benchmarks.cost_model [--write]

records the ledger of one LLaMA-7B decoder layer (q/k/v/o 4096 x 4096, gate/up 11008 x 4096,
down 4096 x 11008; bf16 weights, already on the device) at real shapes on the CPU (the numpy
twins log the same launches, grids and bytes as the Triton kernels: tests/test_ledger.py),
with the device path's chunking (blocks per engine call by working memory under the default
budget), and projects one H100 for 32 such layers from these assumptions:

- every kernel and torch call moves its logical bytes at the HBM bandwidth (3.35 TB/s, H100
  SXM: a bound that real kernels reach 70-90% of);
- latency-bound kernels (the DP start, Lloyd: binary searches) take `serial_steps` dependent
  memory accesses of 0.6 us each per wave of resident programs (programs per SM from the
  compile report, docs/kernels.md), when that is longer than their bytes take;
- each launch costs 20 us of host time (Python launcher and driver), each host sync 50 us.

`--write` replaces the projection section of docs/benchmarks.md. Figures are a projection,
not a measurement; the measured CPU times of the same run are printed beside them.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch

from benchmarks.bench_engine import config_dict
from benchmarks.bench_prepare import DecoderLayer
from coreai_opt_gpu import ledger
from coreai_opt_gpu.engine.cluster import chunking
from coreai_opt_gpu.palettization import KMeansPalettizer, KMeansPalettizerConfig

MARK_START = "<!-- cost-model:start -->"
MARK_END = "<!-- cost-model:end -->"


@dataclass(frozen=True)
class Device:
    """What the projection assumes of the GPU and its host."""

    name: str
    hbm_bytes_per_s: float
    sms: int
    launch_s: float = 20e-6
    sync_s: float = 50e-6
    dependent_access_s: float = 0.6e-6
    # resident programs per SM of the latency-bound kernels (sm_90 builds, docs/kernels.md)
    resident: dict[str, int] = field(default_factory=lambda: {"coarse_dp_start": 2, "lloyd_1d": 8})


H100 = Device("H100 SXM (assumed)", hbm_bytes_per_s=3.35e12, sms=132)


@dataclass(frozen=True)
class Projection:
    bandwidth_s: float
    latency_s: float
    launch_s: float
    sync_s: float
    launches: int
    syncs: int
    bytes_moved: int

    @property
    def total_s(self) -> float:
        return self.bandwidth_s + self.latency_s + self.launch_s + self.sync_s


def lloyd_blocks_per_program(k: int) -> int:
    """The Lloyd launch heuristic's blocks per program (pure arithmetic, as the kernel's)."""
    return max(1, 128 // (1 << max(0, (k - 1).bit_length())))


def project(book: ledger.Ledger, device: Device, k: int, repeat: int = 1) -> Projection:
    """Time of the recorded work on `device`, `repeat` times over (e.g. 32 layers)."""
    bandwidth = latency = 0.0
    launches = 0
    moved = 0
    for event in book.events:
        if event.kind not in ("launch", "op", "copy"):
            continue
        launches += event.kind != "copy"
        size = event.bytes_read + event.bytes_written
        moved += size
        transfer = size / device.hbm_bytes_per_s
        wait = 0.0
        if event.serial_steps and event.name in device.resident:
            programs = event.grid[0] if event.grid else 1
            if event.name == "lloyd_1d":
                programs = math.ceil(programs / lloyd_blocks_per_program(k))
            waves = math.ceil(programs / (device.sms * device.resident[event.name]))
            wait = waves * event.serial_steps * device.dependent_access_s
        bandwidth += transfer if transfer >= wait else 0.0
        latency += wait if wait > transfer else 0.0
    syncs = book.summary().syncs
    return Projection(
        bandwidth_s=repeat * bandwidth,
        latency_s=repeat * latency,
        launch_s=repeat * launches * device.launch_s,
        sync_s=repeat * syncs * device.sync_s,
        launches=repeat * launches,
        syncs=repeat * syncs,
        bytes_moved=repeat * moved,
    )


CASES = {
    # name -> (config, K, fast mode)
    "4-bit, group_size 16, fast mode": (
        lambda: KMeansPalettizerConfig.presets.w4(group_size=16),
        16,
    ),
    "8-bit, per tensor, exact mode": (
        lambda: _exact(KMeansPalettizerConfig.from_dict(config_dict(8, None, 1))),
        256,
    ),
}


def _exact(config: KMeansPalettizerConfig) -> KMeansPalettizerConfig:
    config.global_config.enable_fast_kmeans_mode = False
    return config


def decoder_layer(dim: int, inter: int, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = DecoderLayer(dim, inter).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.distributions.StudentT(4.0).sample(p.shape) * 0.02)
    return layer.to(dtype)


def run_case(name: str, dim: int, inter: int, device: Device = H100, layers: int = 32) -> dict:
    """Record one layer's prepare on the host path and project `layers` of them."""
    make_config, k = CASES[name]
    model = decoder_layer(dim, inter)
    weights = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    with ledger.record() as book, chunking("device"):
        KMeansPalettizer(model, make_config()).prepare()
    cpu_s = time.perf_counter() - start
    projection = project(book, device, k, repeat=layers)
    lloyd = [e for e in book.of_kind("launch") if e.name == "lloyd_1d"]
    return {
        "case": name,
        "weights_per_layer": weights,
        "cpu_s": cpu_s,
        "bytes_per_weight": projection.bytes_moved / (layers * weights),
        "projection": projection,
        "lloyd_serial_steps": max((e.serial_steps for e in lloyd), default=0),
    }


def table(rows: list[dict], device: Device, layers: int) -> str:
    head = (
        f"| case | bytes / weight | launches | syncs | bandwidth | latency-bound | launches "
        f"| syncs | **projected, {layers} layers** | measured CPU, 1 layer (host path) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        p = r["projection"]
        lines.append(
            f"| {r['case']} | {r['bytes_per_weight']:.1f} | {p.launches} | {p.syncs} "
            f"| {p.bandwidth_s:.3f} s | {p.latency_s:.3f} s | {p.launch_s:.3f} s "
            f"| {p.sync_s:.4f} s | **{p.total_s:.2f} s** | {r['cpu_s']:.1f} s |"
        )
    return head + "\n".join(lines) + "\n"


def machine() -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    commit += " (with uncommitted changes)" if dirty else ""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
        f"{load:.1f}, torch {torch.__version__}, commit {commit or 'unknown'}, "
        f"{time.strftime('%Y-%m-%d')}"
    )


def section(rows: list[dict], device: Device, layers: int) -> str:
    return (
        f"{MARK_START}\n"
        f"**Projection** (not a measurement) for one {device.name}, {layers} LLaMA-7B decoder "
        f"layers, bf16 weights on the device: HBM {device.hbm_bytes_per_s / 1e12:.2f} TB/s, "
        f"{device.launch_s * 1e6:.0f} us per launch, {device.sync_s * 1e6:.0f} us per sync, "
        f"{device.dependent_access_s * 1e6:.1f} us per dependent access of the latency-bound "
        f"kernels (see `benchmarks/cost_model.py`). Ledger recorded on the host path: "
        f"{machine()}.\n\n{table(rows, device, layers)}{MARK_END}\n"
    )


def write_section(
    text: str, path: str = "docs/benchmarks.md", marks: tuple[str, str] = (MARK_START, MARK_END)
) -> None:
    """Replace the marked section of `path` with `text` (append it when absent)."""
    start, end = marks
    with open(path) as f:
        doc = f.read()
    if start in doc:
        before, rest = doc.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        doc = before + text + after
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    with open(path, "w") as f:
        f.write(doc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--inter", type=int, default=11008)
    args = parser.parse_args(argv)
    rows = [run_case(name, args.dim, args.inter) for name in CASES]
    text = section(rows, H100, 32)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    sys.exit(main())
