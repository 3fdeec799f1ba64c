"""Palettizing one linear weight: ours vs the reference coreai_opt 0.3.0, from one config dict.

Run: `python -m pytest benchmarks/bench_engine.py --benchmark-enable` (slow: the reference
takes seconds to minutes per case). With benchmarks disabled (the test command) each case runs
once on a tiny shape. Both packages get the same `kmeans_palettization_config` dict and the
same Student-t(4) weight; each result is checked (at most 2^n_bits distinct values per block)
before timing. extra_info holds both times, the speed ratio and the MSE ratio.
"""

import importlib.util
import time
import warnings

import pytest
import torch
from torch import nn

from coreai_opt_gpu.palettization import KMeansPalettizerConfig
from coreai_opt_gpu.palettization.palettize import palettize_targets
from coreai_opt_gpu.palettization.targets import find_targets

HAS_REFERENCE = importlib.util.find_spec("coreai_opt") is not None
# name -> (rows, cols, n_bits, group_size or None, cluster_dim)
CASES = {
    "4096x4096-4bit-g16": (4096, 4096, 4, 16, 1),
    "4096x4096-2bit-g16": (4096, 4096, 2, 16, 1),
    "4096x4096-4bit-per-tensor": (4096, 4096, 4, None, 1),
    "4096x4096-8bit-per-tensor": (4096, 4096, 8, None, 1),
    "11008x4096-4bit-g16": (11008, 4096, 4, 16, 1),
    "1024x1024-4bit-vector2": (1024, 1024, 4, None, 2),
    "1024x1024-4bit-vector4": (1024, 1024, 4, None, 4),
}
TINY = (64, 32)


def config_dict(n_bits, group_size, cluster_dim):
    granularity = (
        {"type": "per_grouped_channel", "axis": 0, "group_size": group_size}
        if group_size
        else {"type": "per_tensor"}
    )
    spec = {"n_bits": n_bits, "granularity": granularity, "cluster_dim": cluster_dim}
    return {
        "kmeans_palettization_config": {
            "global_config": {
                "op_state_spec": {"weight": spec},
                "enable_fast_kmeans_mode": cluster_dim == 1,
            }
        }
    }


def linear(rows, cols):
    layer = nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        torch.manual_seed(0)  # heavy tails, like LLM weights; the same tensor for both sides
        layer.weight.copy_(torch.distributions.StudentT(4.0).sample((rows, cols)) * 0.02)
    return nn.Sequential(layer)


def ours(model, config):
    targets = find_targets(model, KMeansPalettizerConfig.from_dict(config))
    (result,) = palettize_targets(targets).values()
    return result.dequantize()


def reference(model, config):
    from coreai_opt.palettization import KMeansPalettizer
    from coreai_opt.palettization import KMeansPalettizerConfig as ReferenceConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = KMeansPalettizer(model, ReferenceConfig.from_dict(config)).prepare(
            (torch.randn(1, model[0].in_features),)
        )
    return prepared[0].weight.detach()


def distinct_per_block(weight, group_size, cluster_dim):
    rows = group_size or weight.shape[0]
    blocks = weight.reshape(weight.shape[0] // rows, rows // cluster_dim, cluster_dim, -1)
    vectors = blocks.permute(0, 1, 3, 2).reshape(blocks.shape[0], -1, cluster_dim)
    return max(len(torch.unique(v, dim=0)) for v in vectors)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


@pytest.mark.parametrize("name", CASES)
def test_palettize_linear(benchmark, name):
    rows, cols, n_bits, group_size, cluster_dim = CASES[name]
    if benchmark.disabled:
        rows, cols = TINY
        group_size = group_size and 16
    config = config_dict(n_bits, group_size, cluster_dim)
    weight = linear(rows, cols)[0].weight.detach().clone()

    decoded, first_seconds = timed(ours, linear(rows, cols), config)
    assert distinct_per_block(decoded, group_size, cluster_dim) <= 2**n_bits
    ours_mse = float(((decoded - weight) ** 2).mean())
    benchmark.pedantic(
        ours,
        args=(linear(rows, cols), config),
        rounds=3 if not benchmark.disabled else 1,
        iterations=1,
    )
    stats = benchmark.stats.stats if benchmark.stats else None
    ours_seconds = stats.min if stats else first_seconds
    info = {
        "shape": [rows, cols],
        "n_bits": n_bits,
        "group_size": group_size,
        "cluster_dim": cluster_dim,
        "ours_s": ours_seconds,
        "ours_rel_mse": ours_mse / float((weight**2).mean()),
    }
    if HAS_REFERENCE:
        theirs, reference_seconds = timed(reference, linear(rows, cols), config)
        reference_mse = float(((theirs - weight) ** 2).mean())
        info.update(
            {
                "reference_s": reference_seconds,
                "speedup_vs_reference": reference_seconds / ours_seconds,
                "mse_ratio_vs_reference": ours_mse / reference_mse,
            }
        )
    benchmark.extra_info.update(info)
