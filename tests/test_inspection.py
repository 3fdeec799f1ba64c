"""inspection: ModelInspector (eager) and bits_per_weight."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coreai_opt_gpu import ExportBackend
from coreai_opt_gpu.inspection import ExecutionMode, ModelInspector, bits_per_weight
from coreai_opt_gpu.palettization import KMeansPalettizer, KMeansPalettizerConfig


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.w = nn.Parameter(torch.randn(4, 8))

    def forward(self, x):
        return F.linear(self.body(x) + self.body(x), self.w)  # body runs twice


def test_inspector_names_ops_as_configs_match_them():
    inspector = ModelInspector(Tiny(), (torch.randn(2, 8),), "eager")
    names = [op.op_name for op in inspector.summary.model.all_ops()]
    assert names == ["add", "linear", "body.0.linear", "body.1.relu"]  # body's 2nd run unseen
    assert [op.op_name for op in inspector.get_matched_ops_for_op_type("linear")] == [
        "linear",
        "body.0.linear",
    ]
    assert [op.op_name for op in inspector.get_matched_ops_for_op_name(r"body\..*")] == [
        "body.0.linear",
        "body.1.relu",
    ]
    assert len(inspector.get_matched_ops_for_module_type(nn.ReLU)) == 1
    assert len(inspector.get_matched_ops_for_module_name("body")) == 2
    linear = inspector.summary.model.get_submodule("body.0").ops[0]
    relu = inspector.summary.model.get_submodule("body.1").ops[0]
    assert relu.inputs[0].op is linear and linear.outputs[0] == (relu,)
    assert linear.module_stack[-1].module_type == "torch.nn.modules.linear.Linear"
    assert "body.0.linear [linear]" in inspector.format_summary(colorize=False)
    palettizable = ModelInspector(Tiny(), (torch.randn(2, 8),), "eager", KMeansPalettizer)
    assert [op.op_name for op in palettizable.summary.model.all_ops()] == [
        "linear",
        "body.0.linear",
    ]


def test_inspector_errors():
    with pytest.raises(NotImplementedError, match="graph mode"):
        ModelInspector(Tiny(), (torch.randn(2, 8),), ExecutionMode.GRAPH)
    with pytest.raises(ValueError, match="execution_mode='fast' is not valid"):
        ModelInspector(Tiny(), (torch.randn(2, 8),), "fast")
    with pytest.raises(ValueError, match="Unsupported compressor"):
        ModelInspector(Tiny(), (torch.randn(2, 8),), "eager", compressor=nn.Linear)
    inspector = ModelInspector(Tiny(), (torch.randn(2, 8),), "eager")
    with pytest.raises(ValueError, match="Invalid regex"):
        inspector.get_matched_ops_for_op_name("(")
    with pytest.raises(TypeError):
        ModelInspector("model", (), "eager")


def test_bits_per_weight_dense_prepared_and_finalized():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32, bias=False))
    assert bits_per_weight(model).bpw == 32.0
    palettizer = KMeansPalettizer(model, KMeansPalettizerConfig())
    palettizer.prepare()
    expected = 64 * 32 * 4 + 16 * 32  # 4-bit indices, 16 float32 centroids
    prepared = bits_per_weight(model)
    assert (prepared.total_bits, prepared.total_weights) == (expected, 64 * 32)
    assert prepared.per_module_map == {"0": expected / 2048}
    palettizer.finalize(backend=ExportBackend.Torch)
    assert bits_per_weight(model).total_bits == expected  # packed indices and the LUT
