"""Vector palettization quality (cluster_dim 2): ours against coreai_opt 0.3.0, per weight.

    python -m benchmarks.vector_quality [--configs 120] [--seed 0] [--out FILE.json]

For each of N random configs, builds the same small model in both packages (an optional
nn.Conv2d, then 1-3 nn.Linear; channels 16-256, Student-t(4) x 0.02 weights) and gives both
the same `kmeans_palettization_config` dict through `KMeansPalettizerConfig.from_dict`:
cluster_dim 2, n_bits 2/3/4/6, per tensor or per grouped channel (group size 8/16/32
dividing every output channel count), `enable_per_channel_scale` on or off, `lut_qspec`
None or int8. Each package prepares its own copy (`KMeansPalettizer(model, config).prepare`)
after `torch.manual_seed` / `numpy.random.seed` with the config's seed, so a run is
deterministic. For every palettized weight it records the squared error of the palettized
weight against the dense one in both packages and their ratio ours / reference (below 1:
ours is closer), prints the distribution of the ratio and the worst weights, and writes
every row to the JSON file. Runs on the CPU, one thread by default (`--threads`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings

import numpy as np
import torch
from torch import nn

CHANNELS = [16, 32, 48, 64, 96, 128, 160, 192, 256]
N_BITS = [2, 3, 4, 6]  # the allowed n_bits in 2..6 (5 is not a palettization option)
GROUP_SIZES = [8, 16, 32]


class Net(nn.Module):
    """Optional conv (its output averaged over space), then a chain of linears."""

    def __init__(self, conv: tuple[int, int, int] | None, widths: list[int]):
        super().__init__()
        self.conv = None if conv is None else nn.Conv2d(conv[0], conv[1], conv[2], bias=False)
        self.linears = nn.ModuleList(
            nn.Linear(a, b, bias=False) for a, b in itertools.pairwise(widths)
        )

    def forward(self, x):
        if self.conv is not None:
            x = self.conv(x).mean((2, 3))
        for layer in self.linears:
            x = layer(x)
        return x


def random_config(seed: int, index: int) -> dict:
    """A model layout and a palettization spec, drawn from (seed, index) alone."""
    rng = np.random.default_rng([seed, index])
    pick = lambda values: values[int(rng.integers(len(values)))]  # noqa: E731
    conv = None
    if rng.random() < 0.5:
        conv = (pick([16, 32, 48, 64]), pick(CHANNELS), pick([1, 3]))
    first = conv[1] if conv else pick(CHANNELS)
    widths = [first] + [pick(CHANNELS) for _ in range(int(rng.integers(1, 4)))]
    outputs = widths[1:] + ([conv[1]] if conv else [])
    granularity = {"type": "per_tensor"}
    if rng.random() < 0.6:
        sizes = [g for g in GROUP_SIZES if all(o % g == 0 for o in outputs)]
        granularity = {"type": "per_grouped_channel", "axis": 0, "group_size": pick(sizes)}
    spec = {
        "n_bits": pick(N_BITS),
        "cluster_dim": 2,
        "granularity": granularity,
        "enable_per_channel_scale": bool(rng.random() < 0.5),
        "lut_qspec": {"dtype": "int8"} if rng.random() < 0.5 else None,
    }
    return {
        "index": index,
        "seed": seed * 100_003 + index,
        "conv": conv,
        "widths": widths,
        "spec": spec,
    }


def config_dict(spec: dict) -> dict:
    return {
        "kmeans_palettization_config": {
            "global_config": {
                "op_state_spec": {"weight": spec},
                "enable_fast_kmeans_mode": False,  # not allowed with cluster_dim > 1
            }
        }
    }


def build(case: dict) -> Net:
    """The case's model with Student-t(4) x 0.02 weights, the same for every call."""
    net = Net(case["conv"], case["widths"])
    torch.manual_seed(case["seed"])
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.distributions.StudentT(4.0).sample(p.shape) * 0.02)
    return net


def example_inputs(case: dict) -> tuple[torch.Tensor]:
    generator = torch.Generator().manual_seed(case["seed"] + 1)
    if case["conv"]:
        return (torch.randn(1, case["conv"][0], 8, 8, generator=generator),)
    return (torch.randn(1, case["widths"][0], generator=generator),)


def prepare(case: dict, package: str) -> tuple[dict[str, torch.Tensor], float]:
    """Palettized weights by module name, and the prepare time in seconds."""
    if package == "ours":
        from coreai_opt_gpu.palettization import KMeansPalettizer, KMeansPalettizerConfig
    else:
        from coreai_opt.palettization import KMeansPalettizer, KMeansPalettizerConfig
    model = build(case)
    config = KMeansPalettizerConfig.from_dict(config_dict(case["spec"]))
    torch.manual_seed(case["seed"])
    np.random.seed(case["seed"] % 2**32)
    start = time.perf_counter()
    prepared = KMeansPalettizer(model, config).prepare(example_inputs(case))
    seconds = time.perf_counter() - start
    weights = {
        name: m.weight.detach().clone()
        for name, m in prepared.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
        and torch.nn.utils.parametrize.is_parametrized(m, "weight")
    }
    return weights, seconds


def measure(case: dict) -> list[dict]:
    dense = {
        name: m.weight.detach().clone()
        for name, m in build(case).named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    }
    ours, ours_s = prepare(case, "ours")
    ref, ref_s = prepare(case, "reference")
    spec = case["spec"]
    k = 2 ** spec["n_bits"]
    group = spec["granularity"].get("group_size")
    rows = []
    for name, d in dense.items():
        row = {
            "config": case["index"],
            "layer": name,
            "kind": "conv" if d.dim() == 4 else "linear",
            "shape": list(d.shape),
            "n_bits": spec["n_bits"],
            "k": k,
            "group_size": group,
            "per_channel_scale": spec["enable_per_channel_scale"],
            "lut_int8": spec["lut_qspec"] is not None,
            "seconds_ours": ours_s,
            "seconds_reference": ref_s,
        }
        vectors = d.numel() // 2
        row["vectors_per_block"] = vectors * group // d.shape[0] if group else vectors
        if name not in ours or name not in ref:
            row["skipped"] = [p for p, w in (("ours", ours), ("reference", ref)) if name not in w]
            rows.append(row)
            continue
        se_ours = float(((ours[name].double() - d.double()) ** 2).sum())
        se_ref = float(((ref[name].double() - d.double()) ** 2).sum())
        # both exact (a block of at most K distinct vectors): ratio 1
        exact = 1.0 if se_ours == 0 else float("inf")
        ratio = se_ours / se_ref if se_ref > 0 else exact
        row.update(se_ours=se_ours, se_reference=se_ref, ratio=ratio)
        rows.append(row)
    return rows


def describe(row: dict) -> str:
    granularity = f"g{row['group_size']}" if row["group_size"] else "per-tensor"
    shape = "x".join(map(str, row["shape"]))
    return (
        f"cfg {row['config']:>3} {row['layer']:<10} {row['kind']:<6} {shape:<14} "
        f"{row['n_bits']}-bit {granularity:<10} pcs={int(row['per_channel_scale'])} "
        f"lut8={int(row['lut_int8'])} vec/block={row['vectors_per_block']}"
    )


def summary(rows: list[dict]) -> str:
    measured = [r for r in rows if "ratio" in r]
    ratios = np.array([r["ratio"] for r in measured])
    skipped = len(rows) - len(measured)
    lines = [
        f"weights: {len(measured)} measured, {skipped} skipped, "
        f"from {len({r['config'] for r in rows})} configs",
        f"ratio ours/reference: min {ratios.min():.4f}  median {np.median(ratios):.4f}  "
        f"p95 {np.percentile(ratios, 95):.4f}  max {ratios.max():.4f}  "
        f"mean {ratios.mean():.4f}",
        f"above 1.02: {int((ratios > 1.02).sum())}   above 1.005: {int((ratios > 1.005).sum())}"
        f"   below 0.98: {int((ratios < 0.98).sum())}",
        f"time: ours {sum(r['seconds_ours'] for r in _first_per_config(rows)):.1f} s, "
        f"reference {sum(r['seconds_reference'] for r in _first_per_config(rows)):.1f} s",
        "worst 10:",
    ]
    for r in sorted(measured, key=lambda r: -r["ratio"])[:10]:
        lines.append(f"  {r['ratio']:.4f}  {describe(r)}")
    return "\n".join(lines)


def _first_per_config(rows: list[dict]) -> list[dict]:
    seen, first = set(), []
    for r in rows:
        if r["config"] not in seen:
            seen.add(r["config"])
            first.append(r)
    return first


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="vector_quality.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    rows = []
    start = time.perf_counter()
    for index in range(args.configs):
        case = random_config(args.seed, index)
        case_rows = measure(case)
        rows.extend(case_rows)
        worst = max((r.get("ratio", float("nan")) for r in case_rows), default=float("nan"))
        print(
            f"[{index + 1}/{args.configs}] {len(case_rows)} weights, worst ratio "
            f"{worst:.4f}, {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    print(summary(rows))
    print(f"wall time {time.perf_counter() - start:.0f} s; rows written to {args.out}")


if __name__ == "__main__":
    main()
