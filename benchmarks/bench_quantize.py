"""Fake quantization: our op vs PyTorch's fake_quantize_per_{tensor,channel}_affine, our
fake-quantize module vs coreai_opt's, and the joint palettize-then-quantize flow's forward
overhead, each in one run. Results are checked against the reference before timing;
extra_info holds times, ratios and GB/s. Tiny when disabled."""

import pytest
import torch
from torch import nn

from benchmarks.timing import seconds_per_call as seconds
from coreai_opt_gpu import ExportBackend, ops
from coreai_opt_gpu.palettization import (
    KMeansPalettizer,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
)
from coreai_opt_gpu.quantization import (
    ModuleQuantizerConfig,
    QuantizationSpec,
    Quantizer,
    QuantizerConfig,
)


@pytest.mark.parametrize("axis", [None, 0], ids=["per-tensor", "per-channel"])
def test_fake_quantize_op(benchmark, axis):
    rows, cols = (64, 48) if benchmark.disabled else (4096, 4096)
    repeat = 1 if benchmark.disabled else 5
    x = torch.randn(rows, cols)
    channels = 1 if axis is None else rows
    scale = x.abs().reshape(channels, -1).amax(1) / 127.5
    zero_point = torch.zeros(channels)
    if axis is None:

        def baseline():
            return torch.fake_quantize_per_tensor_affine(x, float(scale), 0, -128, 127)
    else:

        def baseline():
            return torch.fake_quantize_per_channel_affine(x, scale, zero_point.int(), 0, -128, 127)

    def ours():
        return ops.fake_quantize(x, scale, zero_point, axis, -128, 127)

    torch.testing.assert_close(ours(), baseline(), rtol=0, atol=float(scale.max()) * 1.001)
    baseline_s = seconds(baseline, repeat)
    benchmark.pedantic(ours, rounds=repeat, iterations=1, warmup_rounds=1)
    stats = benchmark.stats.stats if benchmark.stats else None
    ours_s = stats.median if stats else seconds(ours, 1)
    logical_bytes = 2 * x.numel() * 4
    benchmark.extra_info.update(
        {
            "shape": [rows, cols],
            "ours_s": ours_s,
            "torch_s": baseline_s,
            "ours_vs_torch": baseline_s / ours_s,
            "ours_GBps": logical_bytes / ours_s / 1e9,
        }
    )


def test_fake_quantize_module_vs_reference(benchmark):
    """Our fake-quantize module (the fused op) against coreai_opt's, observers off, int8 per
    output channel: outputs must be equal before anything is timed."""
    reference = pytest.importorskip("coreai_opt.quantization.spec", reason="needs coreai_opt")
    from coreai_opt.config.spec import CompressionTargetTensor as RefTarget

    from coreai_opt_gpu.config.spec import CompressionTargetTensor
    from coreai_opt_gpu.quantization.spec import QuantizationComponentFactory

    rows, cols = (64, 48) if benchmark.disabled else (4096, 4096)
    repeat = 1 if benchmark.disabled else 5
    x = torch.randn(rows, cols)
    fields = {"dtype": "int8", "granularity": {"type": "per_channel", "axis": 0}}
    ours = QuantizationComponentFactory.create_fake_quantizer(
        QuantizationSpec(**fields), CompressionTargetTensor.WEIGHT
    )
    theirs = reference.QuantizationComponentFactory.create_fake_quantizer(
        reference.QuantizationSpec(**fields), RefTarget.WEIGHT
    )
    with torch.no_grad():
        ours(x), theirs(x)  # observe
        ours.disable_observer()
        theirs.disable_observer()
        assert torch.equal(ours(x), theirs(x))
        theirs_s = seconds(lambda: theirs(x), repeat)
        benchmark.pedantic(lambda: ours(x), rounds=repeat, iterations=1, warmup_rounds=1)
    stats = benchmark.stats.stats if benchmark.stats else None
    ours_s = stats.median if stats else seconds(lambda: ours(x), 1)
    benchmark.extra_info.update(
        {
            "shape": [rows, cols],
            "ours_s": ours_s,
            "coreai_opt_s": theirs_s,
            "ours_vs_coreai_opt": theirs_s / ours_s,
            "ours_GBps": 2 * x.numel() * 4 / ours_s / 1e9,
        }
    )


def test_joint_flow_overhead(benchmark):
    """Forward time of the joint flow's models against the float model: palettized
    (finalized), + int8 activations prepared (graph mode, fake quantization), and finalized
    for plain PyTorch."""
    dim = 64 if benchmark.disabled else 2048
    repeat = 1 if benchmark.disabled else 20
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim)).eval()
    x = torch.randn(8, dim)
    with torch.no_grad():
        float_s = seconds(lambda: model(x), repeat)
        spec = PalettizationSpec(
            n_bits=4,
            lut_qspec={"dtype": "int8"},
            granularity={"type": "per_grouped_channel", "axis": 0, "group_size": 16},
        )
        palettizer = KMeansPalettizer(
            model,
            KMeansPalettizerConfig(
                global_config=ModuleKMeansPalettizerConfig(op_state_spec={"weight": spec})
            ),
        )
        palettizer.prepare((x,))
        palettizer.finalize(backend=ExportBackend.Torch)
        palettized_s = seconds(lambda: model(x), repeat)
        int8 = QuantizationSpec()
        quantizer = Quantizer(
            model,
            QuantizerConfig(
                global_config=ModuleQuantizerConfig(
                    op_state_spec=None, op_input_spec={"*": int8}, op_output_spec={"*": int8}
                )
            ),
        )
        prepared = quantizer.prepare((x,))
        with quantizer.calibration_mode():
            prepared(x)
        expected = prepared(x)
        prepared_s = seconds(lambda: prepared(x), repeat)
        finalized = quantizer.finalize(backend=ExportBackend.Torch)
        assert torch.equal(finalized(x), expected)
        benchmark.pedantic(lambda: finalized(x), rounds=repeat, iterations=1, warmup_rounds=1)
        stats = benchmark.stats.stats if benchmark.stats else None
        joint_s = stats.median if stats else seconds(lambda: finalized(x), 1)
    benchmark.extra_info.update(
        {
            "dim": dim,
            "float_s": float_s,
            "palettized_s": palettized_s,
            "fake_quantized_s": prepared_s,
            "finalized_s": joint_s,
            "finalized_vs_float": joint_s / float_s,
            "finalized_vs_palettized": joint_s / palettized_s,
        }
    )
