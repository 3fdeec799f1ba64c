"""Fused LUT-gather dequant against plain PyTorch indexing, in one run.

Run: `python -m pytest benchmarks --benchmark-enable`. With benchmarks disabled (the test
command) each case runs once on a tiny shape as a smoke test. Each case checks its result
against the baseline before timing and records time, logical bytes and GB/s in extra_info.
"""

import pytest
import torch

from benchmarks.timing import seconds_per_call as seconds
from coreai_opt_gpu.ops import lut_dequant
from coreai_opt_gpu.palettization.layout import palette_layout
from coreai_opt_gpu.palettization.spec import PalettizationSpec, PerGroupedChannelGranularity

HAS_CUDA = torch.cuda.is_available()
# name -> (rows, cols, n_bits, group_size or None for per-tensor)
CASES = {
    "4096x4096-4bit-g16": (4096, 4096, 4, 16),
    "11008x4096-4bit-g16": (11008, 4096, 4, 16),
    "4096x4096-8bit-per-tensor": (4096, 4096, 8, None),
}
TINY = (64, 48)


def plain_torch_dequant(indices, lut, rows_per_block):
    """Baseline: one advanced-indexing gather, [V, M] codes -> [V, M] weight (D = 1)."""
    block = torch.arange(indices.shape[0], device=indices.device) // rows_per_block
    return lut[block[:, None], 0, indices.long(), 0]


@pytest.mark.parametrize("name", CASES)
def test_lut_dequant(benchmark, name):
    rows, cols, n_bits, group = CASES[name]
    if benchmark.disabled:
        rows, cols = TINY
        group = group and 16
    granularity = (
        PerGroupedChannelGranularity(axis=0, group_size=group) if group else {"type": "per_tensor"}
    )
    spec = PalettizationSpec(n_bits=n_bits, granularity=granularity)
    layout = palette_layout((rows, cols), spec, "linear")
    device = "cuda" if HAS_CUDA else "cpu"
    gen = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 2**n_bits, layout.index_shape, generator=gen, dtype=torch.uint8).to(
        device
    )
    lut = layout.lut_view(torch.randn(layout.num_blocks, 2**n_bits, 1, generator=gen)).to(
        device, torch.float16
    )

    def ours():
        return lut_dequant(indices, lut, None, torch.float16)

    baseline = plain_torch_dequant(indices[:, :, 0], lut, rows // layout.blocks_axis0)
    assert torch.equal(ours().reshape(rows, cols), baseline), "wrong result: not timed"

    result_seconds = seconds(
        lambda: plain_torch_dequant(indices[:, :, 0], lut, rows // layout.blocks_axis0),
        1 if benchmark.disabled else 10,
    )
    benchmark(ours)
    logical_bytes = indices.numel() + 2 * rows * cols + lut.numel() * 2
    stats = benchmark.stats.stats if benchmark.stats else None
    ours_seconds = stats.median if stats else seconds(ours, 1)
    benchmark.extra_info.update(
        {
            "device": torch.cuda.get_device_name() if HAS_CUDA else "cpu",
            "shape": [rows, cols],
            "n_bits": n_bits,
            "group_size": group,
            "logical_bytes": logical_bytes,
            "ours_s": ours_seconds,
            "plain_torch_s": result_seconds,
            "speedup_vs_plain_torch": result_seconds / ours_seconds,
            "ours_GBps": logical_bytes / ours_seconds / 1e9,
        }
    )
