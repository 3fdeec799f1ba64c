"""Demo: palettize a small LLaMA-shaped MLP stack and print size, error and time.

python -m coreai_opt_gpu.demo [--bits 4] [--group-size 16] [--layers 2] [--dim 256]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu.palettization import KMeansPalettizer, KMeansPalettizerConfig


def build_model(layers: int, dim: int, vocab: int = 1024, seed: int = 0) -> nn.Sequential:
    """Embedding + `layers` MLP blocks (dim -> 11/4 dim -> dim) with heavy-tailed weights."""
    torch.manual_seed(seed)
    hidden = dim * 11 // 4
    blocks: list[nn.Module] = [nn.Embedding(vocab, dim)]
    for _ in range(layers):
        blocks += [
            nn.Linear(dim, hidden, bias=False),
            nn.SiLU(),
            nn.Linear(hidden, dim, bias=False),
        ]
    model = nn.Sequential(*blocks)
    t_dist = torch.distributions.StudentT(4.0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(t_dist.sample(p.shape) * 0.02)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=4, choices=(1, 2, 3, 4, 6, 8))
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=256)
    args = parser.parse_args(argv)

    model = build_model(args.layers, args.dim)
    config = KMeansPalettizerConfig.from_dict(
        {
            "kmeans_palettization_config": {
                "global_config": {
                    "op_state_spec": {
                        "weight": {
                            "n_bits": args.bits,
                            "granularity": {
                                "type": "per_grouped_channel",
                                "axis": 0,
                                "group_size": args.group_size,
                            },
                        }
                    }
                }
            }
        }
    )
    tokens = torch.randint(0, 1024, (4, 32))
    dense = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        reference_out = model(tokens)

    start = time.perf_counter()
    KMeansPalettizer(model, config).prepare((tokens,))
    elapsed = time.perf_counter() - start

    dense_bytes = packed_bytes = 0
    print(f"{'weight':<12} {'shape':<14} {'rel. MSE':>9} {'SQNR dB':>8}")
    with torch.no_grad():
        for name, module in model.named_modules():
            if not parametrize.is_parametrized(module, "weight"):
                continue
            weight, original = module.weight, dense[f"{name}.weight"]
            rel_mse = float(((weight - original) ** 2).mean() / (original**2).mean())
            print(
                f"{name + '.weight':<12} {list(weight.shape)!s:<14} {rel_mse:>9.2e} "
                f"{-10 * math.log10(rel_mse):>8.2f}"
            )
            dense_bytes += weight.numel() * 2
            packed_bytes += module.parametrizations.weight[0].packed_bytes
        out_error = float((model(tokens) - reference_out).norm() / reference_out.norm())

    print(
        f"\n{args.bits}-bit, group_size {args.group_size}: {dense_bytes / 2**20:.2f} MiB (fp16) "
        f"-> {packed_bytes / 2**20:.2f} MiB ({dense_bytes / packed_bytes:.1f}x smaller)"
    )
    print(
        f"model output relative error: {out_error:.3%} (random weights amplify it layer by layer)"
    )
    print(f"prepare time: {elapsed:.2f} s on {'CUDA' if torch.cuda.is_available() else 'CPU'}")


if __name__ == "__main__":
    main()
