"""Graph mode: where the fake quantizers go, how configs name graph ops, and finalize.

Placement expectations are written out by hand from the rules in the user guide (and checked
against coreai_opt in test_parity_quantizer.py). Finalized models must reproduce the
prepared model exactly: both compute the same float32 arithmetic."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from coreai_opt_gpu import ExportBackend
from coreai_opt_gpu.quantization import (
    ModuleQuantizerConfig,
    OpQuantizerConfig,
    QuantizationSpec,
    Quantizer,
    QuantizerConfig,
)
from coreai_opt_gpu.quantization.spec import QuantizationScheme
from coreai_opt_gpu.quantization.spec.fake_quantize import FakeQuantizeImplBase
from tests.test_quantizer import INT8, activations_only, conv_net, images

UINT8 = QuantizationSpec(dtype="uint8", qscheme="asymmetric")


def quantizer_nodes(model: fx.GraphModule) -> list[tuple[str, str, FakeQuantizeImplBase]]:
    """(fake-quantize node, the node it reads, module) in graph order."""
    modules = dict(model.named_modules(remove_duplicate=False))
    return [
        (n.name, n.args[0].name, modules[n.target])
        for n in model.graph.nodes
        if n.op == "call_module" and isinstance(modules[n.target], FakeQuantizeImplBase)
    ]


def read(model: fx.GraphModule) -> dict[str, FakeQuantizeImplBase]:
    """The node each fake quantizer reads -> the quantizer."""
    return {source: module for _, source, module in quantizer_nodes(model)}


def test_activation_quantizers_follow_the_patterns():
    """conv -> relu: the relu's output (asymmetric, its range being [0, max]); pooling and
    flatten share that quantizer; the linear output feeding fc2 and the residual add is one
    quantizer; each remaining op output one."""
    prepared = Quantizer(conv_net(), activations_only()).prepare((images(),))
    found = read(prepared)
    assert list(found) == [
        "x", "relu", "max_pool2d", "flatten", "linear", "linear_1", "add", "linear_2"
    ]  # fmt: skip
    assert found["relu"] is found["max_pool2d"] is found["flatten"]
    assert found["relu"].qscheme == QuantizationScheme.ASYMMETRIC
    assert found["linear"].qscheme == QuantizationScheme.SYMMETRIC
    assert len({id(m) for m in found.values()}) == 6
    users = [n for n in prepared.graph.nodes if n.op == "call_module"]
    linear_fq = next(n for n in users if n.args[0].name == "linear")
    assert sorted(u.name for u in linear_fq.users) == ["add", "linear_1"]


def test_op_names_and_types_name_graph_nodes():
    """op_name_config regexes match node names ("linear_1", fc2's call), op_type_config keys
    the function the source called ("linear"). Disabling fc2's op leaves its weight and output
    alone; the add reading that output still quantizes its input (its own config)."""
    config = QuantizerConfig()
    off = OpQuantizerConfig(op_input_spec=None, op_output_spec=None, op_state_spec=None)
    config.global_config.op_name_config = {"linear_1": off}
    prepared = Quantizer(conv_net(), config).prepare((images(),))
    found = read(prepared)
    assert "fc2_weight" not in found and "fc_weight" in found
    node = next(
        n for n in prepared.graph.nodes if n.op == "call_module" and n.args[0].name == "linear_1"
    )
    assert [u.name for u in node.users] == ["add"]
    config = QuantizerConfig.presets.w8()
    config.global_config.op_type_config = {"linear": off}
    weights = read(Quantizer(conv_net(), config).prepare((images(),)))
    assert list(weights) == ["conv_weight"]


def test_attention_projections_are_typed_by_their_function():
    """nn.MultiheadAttention's linear calls are the op type "multi_head_attention_forward"."""
    model = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2, batch_first=True))

    class Attend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj, self.attn = model[0], model[1]

        def forward(self, x):
            x = self.proj(x)
            return self.attn(x, x, x, need_weights=False)[0]

    config = QuantizerConfig.presets.w8()
    config.global_config.op_type_config = {
        "multi_head_attention_forward": OpQuantizerConfig(
            op_input_spec=None, op_output_spec=None, op_state_spec=None
        )
    }
    weights = read(Quantizer(Attend().eval(), config).prepare((torch.randn(2, 3, 8),)))
    assert list(weights) == ["proj_weight"]


def test_integer_input_keys_and_their_yaml_spelling():
    """op_input_spec={0: spec} names input 0 (YAML writes the key as "0"): the three linears'
    data inputs (fc reads flatten, fc2 the first linear, head the add), nothing else."""
    off = ModuleQuantizerConfig(op_state_spec=None, op_output_spec=None, op_input_spec=None)
    config = QuantizerConfig(
        global_config=off,
        module_type_configs={
            nn.Linear: ModuleQuantizerConfig(
                op_state_spec=None, op_output_spec=None, op_input_spec={"0": UINT8}
            )
        },
    )
    assert 0 in config.module_type_configs["torch.nn.modules.linear.Linear"].op_input_spec
    found = read(Quantizer(conv_net(), config).prepare((images(),)))
    assert {name: spec.dtype for name, spec in found.items()} == {
        "flatten": torch.uint8, "linear": torch.uint8, "add": torch.uint8,
    }  # fmt: skip
    assert QuantizerConfig.from_yaml(io.StringIO(config.to_yaml())) == config


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(8, 8)

    def forward(self, x):
        return self.inner(x)


def test_module_type_config_reaches_children():
    """A type key for a container applies to the modules inside it (coreai_opt's
    inheritance), which the old module-by-module resolution missed."""
    model = nn.Sequential(Block(), nn.Linear(8, 8)).eval()
    config = QuantizerConfig.presets.w8().set_module_type(Block, ModuleQuantizerConfig.presets.w4())
    weights = read(Quantizer(model, config).prepare((torch.randn(2, 8),)))
    assert weights["_0_inner_weight"].dtype == torch.int4
    assert weights["_1_weight"].dtype == torch.int8


def test_module_boundary_specs():
    """module_input_spec / module_output_spec quantize the module's boundary tensors, even
    around ops the op-level specs do not cover (a softmax here)."""

    class Soft(nn.Module):
        def forward(self, x):
            return F.softmax(x, -1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.soft, self.fc = Soft(), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.soft(x))

    config = QuantizerConfig(global_config=ModuleQuantizerConfig.presets.w8()).set_module_name(
        "soft", ModuleQuantizerConfig(module_input_spec={0: UINT8}, module_output_spec={0: INT8})
    )
    found = read(Quantizer(Net().eval(), config).prepare((torch.randn(2, 8),)))
    assert found["x"].dtype == torch.uint8 and found["x"].qscheme == QuantizationScheme.ASYMMETRIC
    assert found["softmax"].dtype == torch.int8
    assert "fc_weight" in found


def test_batch_norm_after_conv_is_folded():
    class ConvBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    torch.manual_seed(0)
    model = ConvBN().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    x = images()
    quantizer = Quantizer(model, QuantizerConfig.presets.w8())
    prepared = quantizer.prepare((x,))
    assert not any("batch_norm" in str(n.target) for n in prepared.graph.nodes)
    assert list(read(prepared)) == ["conv_weight"]
    quantizer.disable_fake_quant()
    torch.testing.assert_close(prepared(x), model(x), rtol=1e-5, atol=1e-5)  # fold: rounding


def test_compressed_weights_are_not_quantized_again():
    """Weights decoded by the palettizer's op (here after its Torch finalize) are states
    that stay as they are; the dense head is quantized."""
    from coreai_opt_gpu.palettization import KMeansPalettizer, KMeansPalettizerConfig

    model = conv_net()
    palettizer = KMeansPalettizer(model, KMeansPalettizerConfig().set_module_name("head", None))
    palettizer.prepare((images(),))
    palettizer.finalize(backend=ExportBackend.Torch)
    weights = read(Quantizer(model, QuantizerConfig.presets.w8()).prepare((images(),)))
    assert list(weights) == ["head_weight"]


def test_preserved_attributes_and_dynamic_shapes():
    model = conv_net()
    model.labels = ["a", "b"]
    batch = torch.export.Dim("batch", min=2)
    quantizer = Quantizer(model, QuantizerConfig(preserved_attributes=["labels", "missing"]))
    with pytest.warns(UserWarning, match="no attribute 'missing'"):
        prepared = quantizer.prepare((images(),), dynamic_shapes=({0: batch},))
    assert prepared.labels == ["a", "b"]
    assert prepared(images(n=5)).shape == (5, 10)
    finalized = quantizer.finalize(backend=ExportBackend.Torch)
    assert finalized.labels == ["a", "b"]


# --- finalize ----------------------------------------------------------------------------------

FINALIZE_SPECS = {
    "int8-defaults": QuantizerConfig(),
    "uint8-asymmetric": QuantizerConfig(
        global_config=ModuleQuantizerConfig(op_input_spec={"*": UINT8}, op_output_spec={"*": UINT8})
    ),
    "int4-minval-weights": QuantizerConfig(
        global_config=ModuleQuantizerConfig(
            op_input_spec=None,
            op_output_spec=None,
            op_state_spec={
                "weight": QuantizationSpec(
                    dtype="int4", qscheme="asymmetric", qformulation="minval"
                )
            },
        )
    ),
    "w4-per-block": QuantizerConfig.presets.w4_per_block(block_size=8),
    "fp8-weights-and-activations": QuantizerConfig(
        global_config=ModuleQuantizerConfig(
            op_input_spec={"*": QuantizationSpec(dtype="float8_e4m3fn")},
            op_output_spec=None,
            op_state_spec={
                "weight": QuantizationSpec(
                    dtype="float8_e4m3fn", granularity={"type": "per_channel", "axis": 0}
                )
            },
        )
    ),
    "fp4-e8m0-blocks": QuantizerConfig(
        global_config=ModuleQuantizerConfig(
            op_input_spec=None,
            op_output_spec=None,
            op_state_spec={
                "weight": QuantizationSpec(
                    dtype="float4_e2m1fn",
                    granularity={"type": "per_block", "axis": 1, "block_size": 8},
                )
            },
        )
    ),
}


def prepared_and_calibrated(config: QuantizerConfig):
    model = conv_net()
    quantizer = Quantizer(model, config)
    if "per_block" in str(config.to_dict()):  # conv.weight has one input channel
        with pytest.warns(UserWarning, match="conv.weight.*does not fit the block size"):
            prepared = quantizer.prepare((images(),))
    else:
        prepared = quantizer.prepare((images(),))
    with torch.no_grad(), quantizer.calibration_mode():
        prepared(images(seed=2))
    with torch.no_grad():
        expected = prepared(images(seed=3))
    return quantizer, prepared, expected


def quantized_weights(prepared: fx.GraphModule) -> list[str]:
    return [
        m.tensor_fqn for _, _, m in quantizer_nodes(prepared) if m.tensor_fqn.endswith("weight")
    ]


@pytest.mark.parametrize("config", FINALIZE_SPECS.values(), ids=FINALIZE_SPECS.keys())
def test_finalize_torch_exports_with_integer_codes(config):
    quantizer, prepared, expected = prepared_and_calibrated(config)
    weights = quantized_weights(prepared)
    finalized = quantizer.finalize(backend=ExportBackend.Torch)
    assert not quantizer_nodes(finalized)
    with torch.no_grad():
        assert torch.equal(finalized(images(seed=3)), expected)
    codes = [b for n, b in finalized.named_buffers() if n.endswith(".codes")]
    assert len(codes) == len(weights) > 0
    assert all(finalized.get_parameter(w).numel() == 0 for w in weights)  # dense freed
    assert all(not c.is_floating_point() or c.dtype == torch.float8_e4m3fn for c in codes)
    program = torch.export.export(finalized, (images(seed=3),))
    with torch.no_grad():
        assert torch.equal(program.module()(images(seed=3)), expected)
    with pytest.raises(RuntimeError, match="not prepared"):
        quantizer.finalize()


@pytest.mark.parametrize("config", FINALIZE_SPECS.values(), ids=FINALIZE_SPECS.keys())
def test_finalize_coreai_uses_coreai_torch_ops(config):
    pytest.importorskip("coreai_torch._compression.custom_layers")
    coreai = torch.ops.coreai
    quantizer, prepared, expected = prepared_and_calibrated(config)
    nodes = quantizer_nodes(prepared)
    weights = quantized_weights(prepared)
    finalized = quantizer.finalize()  # the default backend: Core AI
    targets = [getattr(n.target, "overloadpacket", n.target) for n in finalized.graph.nodes]
    assert targets.count(coreai.constexpr_blockwise_shift_scale) == len(weights) > 0
    activations = len(nodes) - len(weights)
    assert targets.count(coreai.quantize) == targets.count(coreai.dequantize) == activations
    with torch.no_grad():
        assert torch.equal(finalized(images(seed=3)), expected)
    assert all(finalized.get_parameter(w).numel() == 0 for w in weights)  # dense freed
