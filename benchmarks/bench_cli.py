"""`coreai-opt-gpu palettize` on 1 vs 2 processes (torchrun, gloo on CPU / NCCL on GPUs), one run.

A random Llama checkpoint is built locally (`checkpoint.tiny.save_tiny_llama`): with
benchmarks enabled 4 layers, hidden 512, intermediate 1408, vocab 4096 (16.0M palettized
weights, bf16, 8 shards), every run through torchrun so start-up costs are alike; disabled
(the test command), the tiny test model once, its one-process run in this process and with
the generic skeleton (no transformers import per rank). Same command otherwise (w4,
group_size 16, fast mode); the outputs must be byte-identical before any time is reported.
torchrun gives each of several ranks one intra-op thread, so with benchmarks enabled a third
run has one rank with one thread: the per-rank comparison (one GPU per rank resembles it).
extra_info: each run's palettizing seconds (from its report: loading, clustering, packing,
gathering, writing; no interpreter start-up or skeleton build), opening seconds, wall
seconds, weights/s, the speed-ups of 2 processes over the others, the CPU count and the load
average. The projected 70B-on-8-GPUs time comes from the GPU cost model:
`python -m benchmarks.cost_model --cluster` (docs/benchmarks.md, GPU).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from coreai_opt_gpu.checkpoint.tiny import save_tiny_llama
from coreai_opt_gpu.cli import main
from tests.conftest import HAS_CUDA

FULL = {"layers": 4, "hidden": 512, "intermediate": 1408, "vocab": 4096, "max_shard_size": "5MB"}
TINY = {"max_shard_size": "60KB"}
COMMON = ("--config", "w4", "--group-size", "16", "--no-progress", "--memory-budget", "16MiB")


def run(model: Path, out: Path, args: list[str], processes: int, threads: int | None = None):
    """(wall seconds, report) of one torchrun launch with `processes` ranks (torchrun gives
    each rank 1 intra-op thread when there are several; `threads` sets it for all)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={processes}", "-m", "coreai_opt_gpu", "palettize"]
    command += [str(model), *args, "--output", str(out)]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    return wall, json.loads((out / "palettization_report.json").read_text())


def run_here(model: Path, out: Path, args: list[str]):
    """(wall seconds, report) of the same command in this process (no launcher)."""
    start = time.perf_counter()
    assert main(["palettize", str(model), *args, "--output", str(out)]) == 0
    wall = time.perf_counter() - start
    return wall, json.loads((out / "palettization_report.json").read_text())


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.safetensors"))}


def test_cli_one_vs_two_processes(benchmark, tmp_path, monkeypatch):
    if not HAS_CUDA:  # the numpy twins, not the Triton interpreter, on CPU-only machines
        monkeypatch.setenv("COREAI_OPT_GPU_BACKEND", "numpy")
    model = save_tiny_llama(tmp_path / "model", **(TINY if benchmark.disabled else FULL))
    if benchmark.disabled:
        args = [*COMMON, "--skeleton", "generic"]
        runs = {"one": run_here(model, tmp_path / "one", args)}
    else:
        args = list(COMMON)
        runs = {"one": run(model, tmp_path / "one", args, 1)}
        runs["one_1thread"] = run(model, tmp_path / "one_1thread", args, 1, threads=1)
    runs["two"] = run(model, tmp_path / "two", args, 2)
    for name in runs:  # gate: every run wrote the same bytes
        assert shard_bytes(tmp_path / name) == shard_bytes(tmp_path / "one"), name
    one = runs["one"][1]["totals"]
    info = {
        "weights": one["elements"],
        "shards": one["shards"],
        "device": runs["one"][1]["device"],
        "cpus": os.cpu_count(),
        "load_average_1min_after": os.getloadavg()[0],
    }
    for name, (wall, report) in runs.items():
        totals = report["totals"]
        info[f"{name}_wall_s"] = wall
        info[f"{name}_palettizing_s"] = totals["seconds_palettizing"]
        info[f"{name}_opening_s"] = totals["seconds_opening"]
        info[f"{name}_weights_per_s"] = totals["weights_per_s"]
    for name in runs:
        if name != "two":
            info[f"speedup_two_over_{name}"] = (
                info[f"{name}_palettizing_s"] / info["two_palettizing_s"]
            )
    benchmark.extra_info.update(info)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # figures are in extra_info
