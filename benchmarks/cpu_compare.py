"""Ours against coreai_opt 0.3.0 on the CPU, each case in fresh processes.

    python -m benchmarks.cpu_compare [--calls 3] [--load 0] [--cases NAME ...] [--write]

Every (case, package) runs in its own new Python process: the first prepare call there is the
headline (users prepare once), the median of the calls after it is the warm figure. Both
packages get the same `kmeans_palettization_config` dict and the same Student-t(4) x 0.02
weights (`torch.manual_seed(0)`); the MSE ratio compares their palettized weights. `--load N`
keeps N busy processes running beside the measurement (the issue's "under load"). `--write`
replaces the CPU comparison section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

from benchmarks.bench_engine import config_dict
from benchmarks.cost_model import machine

MARK_START = "<!-- cpu-compare:start -->"
MARK_END = "<!-- cpu-compare:end -->"

# name -> (layers as [(rows, cols)], n_bits, group_size or None, cluster_dim)
ENCODER = [(384, 384)] * 4 + [(1536, 384), (384, 1536)]
LLAMA_LAYER = [(4096, 4096)] * 4 + [(11008, 4096), (11008, 4096), (4096, 11008)]
CASES = {
    "4096x4096 4-bit g16": ([(4096, 4096)], 4, 16, 1),
    "LLaMA-7B decoder layer 4-bit g16": (LLAMA_LAYER, 4, 16, 1),
    "6-layer 384-wide encoder, 3-bit per tensor": (ENCODER * 6, 3, None, 1),
    "64x64 2-bit per tensor": ([(64, 64)], 2, None, 1),
    "256x256 8-bit per tensor": ([(256, 256)], 8, None, 1),
    "1024x1024 4-bit g16": ([(1024, 1024)], 4, 16, 1),
    "1024x1024 8-bit per tensor": ([(1024, 1024)], 8, None, 1),
    "4096x4096 2-bit per tensor": ([(4096, 4096)], 2, None, 1),
    "4096x4096 8-bit per tensor": ([(4096, 4096)], 8, None, 1),
    "16384x4096 4-bit g16": ([(16384, 4096)], 4, 16, 1),
    "1024x1024 4-bit cluster_dim 2": ([(1024, 1024)], 4, None, 2),
}


def _model(shapes):
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = []
    for rows, cols in shapes:
        layer = nn.Linear(cols, rows, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.distributions.StudentT(4.0).sample((rows, cols)) * 0.02)
        layers.append(layer)
    return nn.ModuleList(layers)


def measure(case: str, package: str, calls: int) -> dict:
    """Run in a fresh process: `calls` prepares of fresh copies of the case's model."""
    import warnings

    import torch

    warnings.simplefilter("ignore")
    if package == "ours":
        from coreai_opt_gpu.palettization import KMeansPalettizer, KMeansPalettizerConfig
    else:
        from coreai_opt.palettization import KMeansPalettizer, KMeansPalettizerConfig
    shapes, n_bits, group_size, cluster_dim = CASES[case]
    dense = [layer.weight.detach().clone() for layer in _model(shapes)]
    seconds, error = [], 0.0
    for call in range(calls):
        model = _model(shapes)
        example = (torch.randn(1, shapes[0][1]),)
        config = KMeansPalettizerConfig.from_dict(config_dict(n_bits, group_size, cluster_dim))
        start = time.perf_counter()
        # a ModuleList has no forward: the reference needs example inputs only to trace, so
        # each case is a list of independent layers given as a Sequential when shapes chain
        prepared = KMeansPalettizer(_as_runnable(model, shapes), config).prepare(example)
        seconds.append(time.perf_counter() - start)
        if call == 0:
            weights = [
                m.weight.detach() for m in prepared.modules() if isinstance(m, torch.nn.Linear)
            ]
            error = sum(float(((w - d) ** 2).sum()) for w, d in zip(weights, dense, strict=True))
    return {"seconds": seconds, "squared_error": error}


def _as_runnable(model, shapes):
    """Layers whose forward runs every one of them on the example input."""
    import torch

    class Fan(torch.nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.layers = layers

        def forward(self, x):
            inputs = (
                x if layer.in_features == x.shape[-1] else x.new_zeros(1, layer.in_features)
                for layer in self.layers
            )
            return [layer(i) for layer, i in zip(self.layers, inputs, strict=True)]

    return Fan(model)


def _busy() -> None:
    while True:
        pass


def run(cases: list[str], calls: int, load: int) -> list[dict]:
    busy = [mp.Process(target=_busy, daemon=True) for _ in range(load)]
    for p in busy:
        p.start()
    rows = []
    try:
        for case in cases:
            row = {"case": case}
            for package in ("ours", "reference"):
                code = (
                    "import json, sys; from benchmarks.cpu_compare import measure; "
                    f"print(json.dumps(measure({case!r}, {package!r}, {calls})))"
                )
                done = subprocess.run(
                    [sys.executable, "-c", code], capture_output=True, text=True,
                    env={**os.environ, "COREAI_OPT_GPU_BACKEND": "numpy"},
                )  # fmt: skip
                if done.returncode:
                    raise RuntimeError(f"{case} / {package} failed:\n{done.stderr[-2000:]}")
                row[package] = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(line(row, load), flush=True)
    finally:
        for p in busy:
            p.terminate()
    return rows


def seconds(value: float) -> str:
    """A time for the table: milliseconds below 0.1 s (small layers take a few), else s."""
    return f"{value * 1000:.1f} ms" if value < 0.1 else f"{value:.2f} s"


def line(row: dict, load: int) -> str:
    ours, ref = row["ours"]["seconds"], row["reference"]["seconds"]
    warm = statistics.median(ours[1:]) if len(ours) > 1 else float("nan")
    warm_ref = statistics.median(ref[1:]) if len(ref) > 1 else float("nan")
    mse = row["ours"]["squared_error"] / max(row["reference"]["squared_error"], 1e-300)
    return (
        f"| {row['case']} | {load} | {seconds(ours[0])} | {seconds(ref[0])} "
        f"| **{ref[0] / ours[0]:.2f}x** | {seconds(warm)} | {seconds(warm_ref)} "
        f"| {warm_ref / warm:.2f}x | {mse:.4f} |"
    )


HEADER = (
    "| case | busy processes | ours, 1st call | coreai_opt, 1st call | speedup, 1st call "
    "| ours, median after | coreai_opt, median after | speedup after | MSE ours / ref |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--load", type=int, default=0)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}\n")
    print(HEADER, end="")
    rows = run(args.cases, args.calls, args.load)
    if args.write:
        from benchmarks.cost_model import write_section

        text = (
            f"{MARK_START}\nEach case in fresh processes (`python -m benchmarks.cpu_compare`): "
            f"{machine()}.\n\n{HEADER}" + "\n".join(line(r, args.load) for r in rows)
            + f"\n{MARK_END}\n"
        )  # fmt: skip
        write_section(text, marks=(MARK_START, MARK_END))


if __name__ == "__main__":
    main()
