"""Streaming weights through the engine in chunks under a memory budget."""

import pytest
import torch
from torch import nn

from coreai_opt_gpu.palettization import KMeansPalettizer, KMeansPalettizerConfig
from coreai_opt_gpu.palettization import palettize as palettize_module
from coreai_opt_gpu.palettization.palettize import (
    blocks_per_call,
    chunks_within,
    palettize_targets,
)
from coreai_opt_gpu.palettization.targets import find_targets


def stack(layers=6, dim=64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(dim, dim, bias=False) for _ in range(layers)])


def test_chunks_respect_the_budget():
    targets = find_targets(stack(5), KMeansPalettizerConfig.presets.w4())
    size = 64 * 64 * 4
    chunks = chunks_within(targets, 2 * size)
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert [len(c) for c in chunks_within(targets, size // 2)] == [1] * 5  # too big: alone
    assert [len(c) for c in chunks_within(targets, 10**9)] == [5]
    weighted = frozenset(t.qualified_name for t in targets[:2])  # sample weights: twice the size
    assert [len(c) for c in chunks_within(targets, 2 * size, weighted)] == [1, 1, 2, 1]


def test_small_budget_streams_without_changing_results(monkeypatch):
    config = KMeansPalettizerConfig.presets.w4()
    whole = palettize_targets(find_targets(stack(), config))
    calls = []
    original = palettize_module.cluster_blocks
    monkeypatch.setattr(
        palettize_module,
        "cluster_blocks",
        lambda blocks, *a, **k: calls.append(blocks.shape) or original(blocks, *a, **k),
    )
    budget = 64 * 64 * 4 * 2  # two weights' fp32 blocks per chunk
    streamed = palettize_targets(find_targets(stack(), config), memory_budget=budget, device="cpu")
    # host path: 3 chunks of 2 weights x 4 blocks, each cut into engine calls whose working
    # memory fits the budget
    per_call = blocks_per_call(16 * 64, 16, 4, False, budget, torch.device("cpu"), 8)
    assert 1 <= per_call < 8
    expected = [min(per_call, 8 - start) for start in range(0, 8, per_call)] * 3
    assert [shape[0] for shape in calls] == expected
    for name, result in whole.items():
        assert torch.equal(result.lut, streamed[name].lut)
        assert torch.equal(result.indices, streamed[name].indices)


@pytest.mark.gpu
def test_cpu_model_streams_through_the_gpu_within_budget():
    model = stack(layers=8, dim=1024)
    budget = 1024 * 1024 * 4 * 2  # two weights at a time
    torch.cuda.reset_peak_memory_stats()
    KMeansPalettizer(model, KMeansPalettizerConfig.presets.w4()).prepare(memory_budget=budget)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())
    assert torch.cuda.max_memory_allocated() < 16 * budget  # bounded by the budget, not model
