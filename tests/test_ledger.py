"""The launch ledger, and what it proves about the scalar engine's device path.

The device path runs here on CPU tensors standing in for CUDA ones (COREAI_OPT_GPU_BACKEND=
triton, Triton under its interpreter); the ledger recognises syncs by what they are, not by
the device, so a readback that would stall a GPU shows up on the CPU too.
"""

import pytest
import torch
from torch import nn

from benchmarks.bench_engine import config_dict
from coreai_opt_gpu import ledger
from coreai_opt_gpu.backend import BACKEND_ENV
from coreai_opt_gpu.palettization import KMeansPalettizer, KMeansPalettizerConfig


def test_ledger_sees_syncs_copies_views_and_allocations():
    x = torch.arange(12.0)
    with ledger.record() as book:
        y = x * 2  # an op and an allocation
        x.view(3, 4).t()  # views: nothing
        float(y.sum())  # a sync
        y[y > 3]  # boolean-mask indexing: a sync
        y.tolist()  # a sync
        y.cpu()  # a copy
        torch.empty(5)  # an allocation, no traffic
    summary = book.summary()
    assert [e.name for e in book.of_kind("sync")] == ["__float__", "__getitem__", "tolist"]
    assert [e.name for e in book.of_kind("copy")] == ["cpu"]
    assert summary.syncs == 4 and summary.copies == 1
    mul = next(e for e in book.of_kind("op") if e.name == "mul")
    assert (mul.bytes_read, mul.bytes_written) == (48, 48)
    assert "empty" in [e.name for e in book.of_kind("alloc")]
    assert "empty" not in summary.torch_ops
    assert ledger.active() is None


def linear_stack(layers, rows, cols, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(cols, rows, bias=False) for _ in range(layers)])
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.distributions.StudentT(4.0).sample(p.shape) * 0.02)
    return model


def prepare_recorded(model, config, **kwargs):
    with ledger.record() as book:
        KMeansPalettizer(model, config).prepare(**kwargs)
    return book


def launches(book):
    return [
        (e.name, e.grid, e.bytes_read, e.bytes_written, e.serial_steps)
        for e in book.of_kind("launch")
    ]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "exact"])
def test_device_path_syncs_once_per_prepare_and_runs_no_numpy(fast, monkeypatch):
    """2-bit, one LUT per 16 rows: one sync (the weight check) however many layers and
    chunks; every kernel a Triton launch; the twin path logs the same launches."""
    config = KMeansPalettizerConfig.from_dict(config_dict(2, 16, 1))
    config.global_config.enable_fast_kmeans_mode = fast
    monkeypatch.setenv(BACKEND_ENV, "triton")
    one = prepare_recorded(linear_stack(1, 32, 64), config)
    three_chunked = prepare_recorded(linear_stack(3, 32, 64), config, memory_budget=32 * 64 * 4)
    for book in (one, three_chunked):
        summary = book.summary()
        assert summary.syncs == 1, [e for e in book.events if e.kind in ("sync", "copy")]
        assert summary.twin_launches == 0 and summary.kernels
        assert all(e.backend == "triton" for e in book.of_kind("launch"))
    assert three_chunked.summary().kernels["lloyd_1d"] >= 3  # one engine call per chunk
    monkeypatch.setenv(BACKEND_ENV, "numpy")
    twin = prepare_recorded(linear_stack(1, 32, 64), config)
    assert launches(twin) == launches(one)
    assert twin.summary().syncs == 1  # the host path logs what the device path would do


def test_bytes_per_weight_4bit_group16_fast_mode():
    """The issue's bound, at LLaMA block shape (16 rows x 4096 columns per LUT), recorded on
    the twin path (the test above shows it logs what the device path logs)."""
    model = linear_stack(2, 256, 4096)
    book = prepare_recorded(model, KMeansPalettizerConfig.presets.w4(group_size=16))
    summary = book.summary()
    weights = 2 * 256 * 4096
    assert summary.syncs == 1
    assert summary.bytes_moved / weights <= 40, summary


def test_fast_mode_weight_beyond_fp16_range_is_split_with_its_own_syncs():
    """A fast-mode weight with values beyond fp16 is found by the one input check; only its
    engine call validates (extra syncs) and clusters the out-of-range block exactly."""
    model = linear_stack(2, 32, 64)
    with torch.no_grad():
        model[1].weight[0, 0] = 7e4  # block 0 of layer 1 (rows 0-15) is beyond fp16
    book = prepare_recorded(model, KMeansPalettizerConfig.presets.w4(group_size=16))
    lut = model[1].parametrizations.weight[0].lut
    assert torch.any(lut[0] == 7e4) and not torch.isinf(lut).any()
    assert book.summary().syncs > 1
    clean = prepare_recorded(
        linear_stack(2, 32, 64), KMeansPalettizerConfig.presets.w4(group_size=16)
    )
    assert clean.summary().syncs == 1
