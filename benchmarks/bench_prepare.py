"""Prepare of a stack of LLaMA-shaped decoder layers: ours vs coreai_opt 0.3.0, one run.

Each layer has q/k/v/o projections (dim x dim) and gate/up (inter x dim), down (dim x inter)
with random Student-t(4) weights. Layers: COREAI_OPT_GPU_BENCH_LAYERS (default 1; 7B shapes:
dim 4096, inter 11008). 4-bit, one LUT per 16 output channels, fast mode. With benchmarks
disabled, 2 tiny layers run once. extra_info: times, speedup, MSE ratio, weights per second.
"""

import os
import time
import warnings

import torch
from torch import nn

from benchmarks.bench_engine import HAS_REFERENCE
from coreai_opt_gpu.palettization import KMeansPalettizer, KMeansPalettizerConfig

LAYERS_ENV = "COREAI_OPT_GPU_BENCH_LAYERS"


class DecoderLayer(nn.Module):
    def __init__(self, dim, inter):
        super().__init__()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, name, nn.Linear(dim, dim, bias=False))
        self.gate_proj = nn.Linear(dim, inter, bias=False)
        self.up_proj = nn.Linear(dim, inter, bias=False)
        self.down_proj = nn.Linear(inter, dim, bias=False)

    def forward(self, x):
        x = x + self.o_proj(self.q_proj(x) + self.k_proj(x) + self.v_proj(x))
        return x + self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def stack(layers, dim, inter):
    torch.manual_seed(0)
    model = nn.Sequential(*[DecoderLayer(dim, inter) for _ in range(layers)]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.distributions.StudentT(4.0).sample(p.shape) * 0.02)
    return model


def weights_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def squared_error(model, dense):
    """Sum of squared differences between each linear's (palettized) weight and the dense one."""
    return sum(
        float(((m.weight.detach() - dense[f"{name}.weight"]) ** 2).sum())
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
    )


def test_prepare_decoder_stack(benchmark):
    layers = int(os.environ.get(LAYERS_ENV, "1"))
    dim, inter = 4096, 11008
    if benchmark.disabled:
        layers, dim, inter = 2, 64, 176
    config = KMeansPalettizerConfig.presets.w4(group_size=16)
    model = stack(layers, dim, inter)
    dense = weights_of(model)
    example = (torch.randn(1, dim),)
    start = time.perf_counter()
    KMeansPalettizer(model, config).prepare(example)
    ours_s = time.perf_counter() - start
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            assert len(torch.unique(m.weight[:16])) <= 16, name  # one block: <= 16 values
    ours_error = squared_error(model, dense)
    elements = sum(p.numel() for p in dense.values())
    info = {
        "layers": layers,
        "dim": dim,
        "inter": inter,
        "ours_s": ours_s,
        "weights_per_s": elements / ours_s,
    }
    if HAS_REFERENCE:
        start = time.perf_counter()
        prepared = reference_prepare(stack(layers, dim, inter), config, example)
        reference_s = time.perf_counter() - start
        info.update(
            {
                "reference_s": reference_s,
                "speedup_vs_reference": reference_s / ours_s,
                "mse_ratio_vs_reference": ours_error / squared_error(prepared, dense),
            }
        )
    benchmark.extra_info.update(info)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # figures are in extra_info


def reference_prepare(model, config, example):
    """The same stack prepared by coreai_opt 0.3.0 from the same config dict."""
    from coreai_opt.palettization import KMeansPalettizer as ReferencePalettizer
    from coreai_opt.palettization import KMeansPalettizerConfig as ReferenceConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ReferencePalettizer(model, ReferenceConfig.from_dict(config.to_dict())).prepare(
            example
        )
