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

`--cluster` adds the command-line job on a LLaMA-70B-shaped checkpoint (80 layers: q/o
8192 x 8192, k/v 1024 x 8192, gate/up 28672 x 8192, down 8192 x 28672; embedding and head
128256 x 8192; bf16) on 8 GPUs (`torchrun ... palettize`): one 70B layer's ledger is
recorded the same way, each rank's clustering is projected from it for the largest share
`distributed.share_by_size` gives a rank, and the job's other steps, which the CLI runs one
after another, at stated rates (`Cluster`): reading the shards (every rank, one disk),
host-to-device copies, gathering the packed results on rank 0 (`gather_object`) and rank 0
writing the output.

`--write` replaces the projection section of docs/benchmarks.md. Figures are a projection,
not a measurement; the measured CPU times of the same run are printed beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from coreai_opt_gpu.distributed import share_by_size
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
class Cluster:
    """What the multi-GPU projection assumes beside `Device` (one node, shared disk)."""

    gpus: int = 8
    disk_read_bytes_per_s: float = 7e9  # one NVMe drive (or page cache misses), all ranks
    disk_write_bytes_per_s: float = 3e9  # rank 0 writes every output shard
    host_to_device_bytes_per_s: float = 25e9  # pageable copies from memory-mapped shards
    gather_bytes_per_s: float = 5e9  # gather_object: pickling + NCCL, received by rank 0


@dataclass(frozen=True)
class Checkpoint:
    """A LLaMA-shaped checkpoint: decoder layer shapes, layer count, embedding/head."""

    name: str
    dim: int
    inter: int
    kv_dim: int
    layers: int
    vocab: int
    bytes_per_value: int = 2  # bf16

    def layer_weights(self) -> list[int]:
        d, i, kv = self.dim, self.inter, self.kv_dim
        return [d * d, kv * d, kv * d, d * d, i * d, i * d, d * i]

    @property
    def total_values(self) -> int:
        return self.layers * sum(self.layer_weights()) + 2 * self.vocab * self.dim


LLAMA_70B = Checkpoint("LLaMA-70B", dim=8192, inter=28672, kv_dim=1024, layers=80, vocab=128256)


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


FOUR_BIT = "4-bit, group_size 16, fast mode"
CASES = {
    # name -> (config, K)
    FOUR_BIT: (
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


def decoder_layer(
    dim: int, inter: int, dtype: torch.dtype = torch.bfloat16, kv_dim: int | None = None
) -> torch.nn.Module:
    """A decoder layer's Linears (k/v of `kv_dim` outputs: grouped-query attention) with
    Student-t(4) x 0.02 weights."""
    torch.manual_seed(0)
    layer = DecoderLayer(dim, inter).eval()
    if kv_dim is not None:
        layer.k_proj = torch.nn.Linear(dim, kv_dim, bias=False)
        layer.v_proj = torch.nn.Linear(dim, kv_dim, bias=False)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.distributions.StudentT(4.0).sample(p.shape) * 0.02)
    return layer.to(dtype)


def run_case(
    name: str,
    dim: int,
    inter: int,
    device: Device = H100,
    layers: int = 32,
    kv_dim: int | None = None,
) -> dict:
    """Record one layer's prepare on the host path and project `layers` of them."""
    make_config, k = CASES[name]
    model = decoder_layer(dim, inter, kv_dim=kv_dim)
    weights = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    with ledger.record() as book, chunking("device"):
        KMeansPalettizer(model, make_config()).prepare()
    cpu_s = time.perf_counter() - start
    projection = project(book, device, k, repeat=layers)
    lloyd = [e for e in book.of_kind("launch") if e.name == "lloyd_1d"]
    return {
        "case": name,
        "layers": layers,
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


def project_cluster(
    row: dict, checkpoint: Checkpoint, device: Device = H100, cluster: Cluster = Cluster()
) -> dict:
    """The CLI job on `cluster.gpus` ranks from one recorded layer (`run_case` row of a
    layer of `checkpoint`'s shapes): seconds per step, run one after another as the job does.
    Clustering scales the layer's projection to the largest rank's share of weights; the
    embedding stays dense (w4 palettizes the head, a Linear, like a decoder Linear)."""
    sizes = checkpoint.layer_weights() * checkpoint.layers + [checkpoint.vocab * checkpoint.dim]
    owners = share_by_size(sizes, cluster.gpus)
    largest = max(
        sum(s for s, o in zip(sizes, owners, strict=True) if o == r) for r in range(cluster.gpus)
    )
    per_layer = row["projection"].total_s / row["layers"]  # the row projects `layers`
    clustered = sum(sizes)
    out_bytes = clustered * 4.01 / 8 + checkpoint.vocab * checkpoint.dim * 2  # + embedding
    read_bytes = checkpoint.total_values * checkpoint.bytes_per_value
    share_bytes = largest * checkpoint.bytes_per_value
    gathered_bytes = out_bytes * (cluster.gpus - 1) / cluster.gpus
    steps = {
        "read shards": read_bytes / cluster.disk_read_bytes_per_s,
        "host to device (largest share)": share_bytes / cluster.host_to_device_bytes_per_s,
        "cluster (largest share)": per_layer * largest / row["weights_per_layer"],
        "gather on rank 0": gathered_bytes / cluster.gather_bytes_per_s,
        "write output (rank 0)": out_bytes / cluster.disk_write_bytes_per_s,
    }
    return {
        "steps": steps,
        "total_s": sum(steps.values()),
        "largest_share": largest,
        "clustered": clustered,
        "out_bytes": out_bytes,
        "one_gpu_cluster_s": per_layer * clustered / row["weights_per_layer"],
    }


def cluster_section(
    row: dict, checkpoint: Checkpoint, device: Device = H100, cluster: Cluster = Cluster()
) -> str:
    """Markdown: the multi-GPU projection of `project_cluster` beside the same job on one
    GPU, its assumptions and steps."""
    job = project_cluster(row, checkpoint, device, cluster)
    alone = project_cluster(row, checkpoint, device, dataclasses.replace(cluster, gpus=1))
    lines = "\n".join(
        f"| {step} | {s:.2f} s | {alone['steps'][step]:.2f} s |" for step, s in job["steps"].items()
    )
    longest = max(job["steps"], key=job["steps"].get)
    return (
        f"**Projection** (not a measurement) of `torchrun --nproc-per-node {cluster.gpus} -m "
        f"coreai_opt_gpu palettize` on a {checkpoint.name}-shaped bf16 checkpoint "
        f"({checkpoint.total_values / 1e9:.1f}B values, {checkpoint.layers} layers), 4-bit "
        f"group_size 16, one node of {cluster.gpus} x {device.name}. Clustering from the ledger "
        f"of one {checkpoint.name} decoder layer recorded at real shapes "
        f"({row['weights_per_layer'] / 1e6:.0f}M weights, {row['bytes_per_weight']:.1f} "
        f"bytes moved per weight; {row['cpu_s']:.0f} s on this CPU), for the largest rank's "
        f"share ({job['largest_share'] / 1e9:.2f}B weights); disk "
        f"{cluster.disk_read_bytes_per_s / 1e9:.0f} GB/s read, "
        f"{cluster.disk_write_bytes_per_s / 1e9:.0f} GB/s write, host-to-device "
        f"{cluster.host_to_device_bytes_per_s / 1e9:.0f} GB/s, gather "
        f"{cluster.gather_bytes_per_s / 1e9:.0f} GB/s (assumed). The job runs these one after "
        f"another:\n\n| step | {cluster.gpus} GPUs | 1 GPU |\n|---|---|---|\n{lines}\n"
        f"| **total** | **{job['total_s']:.1f} s** | **{alone['total_s']:.1f} s** |\n\n"
        f"On {cluster.gpus} GPUs the longest step is '{longest}' "
        f"({job['steps'][longest] / job['total_s']:.0%} of the total) and {cluster.gpus} GPUs "
        f"take {job['total_s'] / alone['total_s']:.2f}x the time of one: at these rates "
        f"clustering is a small part of the job, and gathering every result on rank 0 costs "
        f"about what the other ranks save; what more GPUs add is room (each rank holds "
        f"1/{cluster.gpus} of the weights).\n"
    )


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


def section(rows: list[dict], device: Device, layers: int, extra: str = "") -> str:
    return (
        f"{MARK_START}\n"
        f"**Projection** (not a measurement) for one {device.name}, {layers} LLaMA-7B decoder "
        f"layers, bf16 weights on the device: HBM {device.hbm_bytes_per_s / 1e12:.2f} TB/s, "
        f"{device.launch_s * 1e6:.0f} us per launch, {device.sync_s * 1e6:.0f} us per sync, "
        f"{device.dependent_access_s * 1e6:.1f} us per dependent access of the latency-bound "
        f"kernels (see `benchmarks/cost_model.py`). Ledger recorded on the host path: "
        f"{machine()}.\n\n{table(rows, device, layers)}"
        f"{chr(10) + extra if extra else ''}{MARK_END}\n"
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
    parser.add_argument(
        "--cluster", action="store_true", help="add the LLaMA-70B job on 8 GPUs (minutes)"
    )
    args = parser.parse_args(argv)
    rows = [run_case(name, args.dim, args.inter) for name in CASES]
    extra = ""
    if args.cluster:
        big = LLAMA_70B
        row = run_case(FOUR_BIT, big.dim, big.inter, layers=big.layers, kv_dim=big.kv_dim)
        extra = cluster_section(row, big)
    text = section(rows, H100, 32, extra)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    sys.exit(main())
