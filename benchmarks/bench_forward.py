"""Forward of one palettized linear layer, one token: plain nn.Linear vs ours (fake-palettized,
and finalized with bit-packed indices) vs the reference coreai_opt 0.3.0's fake-palettized
forward, all in one run. Correctness is checked before timing; extra_info holds every time,
the ratios and the finalized bits per weight. Tiny shapes when benchmarks are disabled.
"""

import importlib.util
import warnings

import pytest
import torch
from torch import nn

from benchmarks.timing import seconds_per_call as seconds
from coreai_opt_gpu import ExportBackend
from coreai_opt_gpu.palettization import KMeansPalettizer, KMeansPalettizerConfig

HAS_REFERENCE = importlib.util.find_spec("coreai_opt") is not None
CASES = {"4096x4096-bf16": (4096, torch.bfloat16), "4096x4096-fp32": (4096, torch.float32)}


def layer(dim, dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(dim, dim, bias=False)).to(dtype).eval()


def reference_layer(dim, dtype, config):
    from coreai_opt.palettization import KMeansPalettizer as ReferencePalettizer
    from coreai_opt.palettization import KMeansPalettizerConfig as ReferenceConfig

    model = layer(dim, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (
            ReferencePalettizer(model, ReferenceConfig.from_dict(config))
            .prepare((torch.randn(1, dim, dtype=dtype),))
            .eval()
        )


@pytest.mark.parametrize("name", CASES)
def test_palettized_forward(benchmark, name):
    dim, dtype = CASES[name]
    if benchmark.disabled:
        dim = 64
    repeat = 1 if benchmark.disabled else 20
    x = torch.randn(1, dim, dtype=dtype)
    config = KMeansPalettizerConfig.presets.w4()
    with torch.no_grad():
        plain = layer(dim, dtype)
        plain_s = seconds(lambda: plain(x), repeat)
        fake = layer(dim, dtype)
        KMeansPalettizer(fake, config).prepare()
        expected = torch.nn.functional.linear(x, fake[0].weight)
        assert torch.equal(fake(x), expected), "wrong result: not timed"
        benchmark.pedantic(lambda: fake(x), rounds=repeat, iterations=1, warmup_rounds=1)
        stats = benchmark.stats.stats if benchmark.stats else None
        fake_s = stats.median if stats else seconds(lambda: fake(x), 1)
        final = layer(dim, dtype)
        palettizer = KMeansPalettizer(final, config)
        palettizer.prepare()
        palettizer.finalize(backend=ExportBackend.Torch)
        assert torch.equal(final(x), expected), "wrong finalized result: not timed"
        final_s = seconds(lambda: final(x), max(1, repeat // 4))
        info = {
            "dim": dim,
            "dtype": str(dtype),
            "plain_s": plain_s,
            "fake_s": fake_s,
            "finalized_s": final_s,
            "fake_vs_plain": fake_s / plain_s,
            "finalized_bits_per_weight": palettizer.report.bits_per_weight,
        }
        if HAS_REFERENCE:
            reference = reference_layer(dim, dtype, config.to_dict())
            reference_s = seconds(lambda: reference(x), max(1, repeat // 4))
            info.update(
                {"reference_fake_s": reference_s, "speedup_vs_reference_fake": reference_s / fake_s}
            )
    benchmark.extra_info.update(info)
