"""Differential tests of the Quantizer against the installed coreai_opt 0.3.0 (skipped when it
is not installed): the public surface, where graph mode puts fake quantizers and which ones
share a module, the calibrated parameters and outputs, and the Core AI finalize.

Tolerances: placements and sharing are compared exactly; with global min-max observers and
a calibration that starts with the example input, both packages see the same ranges, so
scales and zero points agree to float rounding (torchao computes them in another order:
relative 1e-6) and outputs exactly or within one quantization step where a value sits on a
rounding boundary. Moving-average calibration differs by design (ours starts from the first
calibration batch) and is compared by error in test_joint_flow.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

reference = pytest.importorskip("coreai_opt.quantization", reason="needs coreai_opt 0.3.0")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

import coreai_opt_gpu.quantization as ours  # noqa: E402 - after the reference check
from tests.test_parity_surface import compare, ours_of, theirs_of  # noqa: E402
from tests.test_quantizer import ConvNet  # noqa: E402


class Mixed(nn.Module):
    """Embedding, gated linears (tanh, sigmoid, mul), attention, cat / slice / transposes,
    sub + relu, reshape, matmul, mean, avg_pool1d, add: most patterns graph mode knows."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 8)
        self.gate = nn.Linear(8, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 4)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        h = torch.tanh(self.fc(x)) * torch.sigmoid(self.gate(x))
        a, _ = self.mha(h, h, h, need_weights=False)
        z = torch.cat([a, h], 1)[:, : idx.shape[1]].transpose(1, 2).transpose(1, 2)
        z = F.relu(z - x).reshape(z.shape[0], -1, 8)
        w = torch.matmul(z, z.transpose(1, 2)).mean(-1, keepdim=True)
        return self.out(F.avg_pool1d(z.transpose(1, 2), 1).transpose(1, 2) + w)


class CNN(nn.Module):
    """relu6 / hardswish after convolutions, a residual add, max and adaptive pooling, a
    transposed convolution, flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.ct = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.fc = nn.Linear(2 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.c1(x))
        y = F.max_pool2d(F.hardswish(self.c2(y)) + y, 2)
        return self.fc(F.adaptive_avg_pool2d(self.ct(y), (8, 8)).flatten(1))


def model_case(name: str):
    torch.manual_seed(0)
    if name == "mixed":
        return Mixed().eval(), lambda g: torch.randint(0, 20, (2, 5), generator=g)
    if name == "cnn":
        return CNN().eval(), lambda g: torch.randn(2, 1, 8, 8, generator=g)
    return ConvNet().eval(), lambda g: torch.randn(4, 1, 8, 8, generator=g)


def configs(package, name: str):
    """The same config built with either package's classes."""
    spec, module = package.QuantizationSpec, package.ModuleQuantizerConfig
    op = package.config.OpQuantizerConfig
    i8, u8 = spec(dtype="int8"), spec(dtype="uint8", qscheme="asymmetric")
    return {
        "default": lambda: package.QuantizerConfig(),
        "activations": lambda: package.QuantizerConfig(
            global_config=module(
                op_state_spec=None, op_input_spec={"*": i8}, op_output_spec={"*": i8}
            )
        ),
        "w8": lambda: package.QuantizerConfig.presets.w8(),
        "w4-per-block": lambda: package.QuantizerConfig.presets.w4_per_block(block_size=4),
        "inputs-uint8": lambda: package.QuantizerConfig(
            global_config=module(op_input_spec={"*": u8}, op_output_spec=None)
        ),
        "by-name": lambda: package.QuantizerConfig(
            global_config=module(),
            module_name_configs={
                "out|fc|head": module(op_output_spec=None, op_input_spec={"*": u8})
            },
        ),
        "by-type": lambda: package.QuantizerConfig(
            global_config=module(
                op_type_config={"linear": op(op_input_spec=None, op_output_spec={"*": u8})}
            )
        ),
        "module-boundary": lambda: package.QuantizerConfig(
            global_config=module(op_state_spec=None),
            module_name_configs={
                "fc": module(module_input_spec={0: u8}, module_output_spec={0: u8})
            },
        ),
    }[name]()


def structure(package, model, config, x):
    """[(fake-quantize node, node it reads)] and the groups of nodes sharing one module."""
    quantizer = package.Quantizer(copy.deepcopy(model), config)
    prepared = quantizer.prepare((x,))
    modules = dict(prepared.named_modules(remove_duplicate=False))
    nodes = [(n.name, n.args[0].name) for n in prepared.graph.nodes if n.op == "call_module"]
    groups: dict[int, list[str]] = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module":
            groups.setdefault(id(modules[node.target]), []).append(node.args[0].name)
    return nodes, sorted(groups.values())


CASES = [
    ("mixed", "default"), ("mixed", "activations"), ("mixed", "w4-per-block"),
    ("mixed", "inputs-uint8"), ("mixed", "by-name"), ("mixed", "by-type"),
    ("mixed", "module-boundary"), ("cnn", "default"), ("cnn", "module-boundary"),
    ("convnet", "by-name"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "config"), CASES, ids=[f"{c}-{k}" for c, k in CASES])
def test_fake_quantizers_sit_and_share_as_in_the_reference(case, config):
    model, data = model_case(case)
    x = data(torch.Generator().manual_seed(1))
    assert structure(ours, model, configs(ours, config), x) == structure(
        reference, model, configs(reference, config), x
    )


def calibrated(package, model, config, batches):
    quantizer = package.Quantizer(copy.deepcopy(model), config)
    prepared = quantizer.prepare((batches[0],))
    with torch.no_grad(), quantizer.calibration_mode():
        for batch in batches:
            prepared(batch)
    modules = dict(prepared.named_modules(remove_duplicate=False))
    params = [
        (n.args[0].name, *modules[n.target].calculate_qparams()[:2])
        for n in prepared.graph.nodes
        if n.op == "call_module"
    ]
    with torch.no_grad():
        outputs = prepared(batches[-1])
    return quantizer, prepared, params, outputs


def observed(package, weights: bool):
    """uint8 inputs, int8 outputs, optionally int4 per-block weights; global min-max
    observers for activations only (both packages then see the same ranges: coreai_opt's
    also holds the ranges prepare saw), the latest range ("static") with weights (prepare
    observes with float weights, calibration with quantized ones)."""
    spec = package.QuantizationSpec
    observe = {"qparam_calculator_cls": "static" if weights else "global_minmax"}
    state = {
        "weight": spec(dtype="int4", granularity={"type": "per_block", "axis": 1, "block_size": 4})
    }
    return package.QuantizerConfig(
        global_config=package.ModuleQuantizerConfig(
            op_input_spec={"*": spec(dtype="uint8", qscheme="asymmetric", **observe)},
            op_output_spec={"*": spec(dtype="int8", **observe)},
            op_state_spec=state if weights else None,
        )
    )


@pytest.mark.parametrize(
    ("case", "weights"), [("mixed", False), ("cnn", True)], ids=["mixed", "cnn-int4-blocks"]
)
def test_calibrated_parameters_and_outputs_match_the_reference(case, weights):
    model, data = model_case(case)
    generator = torch.Generator().manual_seed(2)
    batches = [data(generator) for _ in range(4)]
    _, _, mine, my_out = calibrated(ours, model, observed(ours, weights), batches)
    _, _, theirs, their_out = calibrated(reference, model, observed(reference, weights), batches)
    assert [p[0] for p in mine] == [p[0] for p in theirs]
    for (name, scale, zero_point), (_, their_scale, their_zp) in zip(mine, theirs, strict=True):
        torch.testing.assert_close(
            scale, their_scale, rtol=1e-6, atol=0, msg=lambda m, name=name: f"{name}: {m}"
        )
        assert (zero_point is None) == (their_zp is None), name
        if zero_point is not None:
            assert torch.equal(zero_point.int(), their_zp.int()), name
    torch.testing.assert_close(my_out, their_out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["cnn"])
def test_coreai_finalize_matches_the_reference(case):
    pytest.importorskip("coreai_torch._compression.custom_layers")
    model, data = model_case(case)
    generator = torch.Generator().manual_seed(3)
    batches = [data(generator) for _ in range(3)]
    results = []
    for package in (ours, reference):
        quantizer, _, _, expected = calibrated(package, model, observed(package, True), batches)
        finalized = quantizer.finalize()
        with torch.no_grad():
            out = finalized(batches[-1])
        ops = [str(n.target) for n in finalized.graph.nodes if n.op == "call_function"]
        buffers = sorted(
            (n, b.dtype, tuple(b.shape)) for n, b in finalized.named_buffers() if "_" in n
        )
        results.append((ops, buffers, out, expected))
    (my_ops, my_buffers, my_out, my_expected), (ops, buffers, out, _) = results
    assert my_ops == ops
    assert my_buffers == buffers
    assert torch.equal(my_out, my_expected)
    torch.testing.assert_close(my_out, out, rtol=0, atol=1e-6)


def test_batch_norm_fold_agrees_with_the_reference_to_rounding():
    """Conv -> BatchNorm: we fold the BatchNorm into the weight at prepare, coreai_opt
    simulates the fold (its weight quantizer reads the scaled weight); the prepared models
    agree to rounding of the fold."""

    class ConvBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(144, 4)

        def forward(self, x):
            return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))

    torch.manual_seed(0)
    model = ConvBN().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 2)
    x = torch.randn(4, 1, 8, 8)
    outputs = []
    for package in (ours, reference):
        prepared = package.Quantizer(copy.deepcopy(model), package.QuantizerConfig.presets.w8())
        prepared = prepared.prepare((x,))
        with torch.no_grad():
            outputs.append(prepared(x))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=2e-3)


# --- surface -----------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [".quantization", ".quantization.config"])
def test_quantizer_surface_matches_the_reference(module):
    """Every public name of coreai_opt's quantization packages exists here, of the same
    kind, with the same signatures, fields, defaults, members and presets."""
    theirs_module, ours_module = theirs_of(module), ours_of(module)
    differences = {}
    for name in theirs_module.__all__:
        if not hasattr(ours_module, name):
            differences[name] = "missing"
            continue
        found = compare(module, name, getattr(theirs_module, name), getattr(ours_module, name))
        if found:
            differences[name] = found
    assert not differences


def test_fake_quantize_base_and_aliases_match_the_reference():
    from coreai_opt.common import ExportBackend as TheirBackend
    from coreai_opt.quantization.spec.fake_quantize import FakeQuantizeImplBase as Theirs

    from coreai_opt_gpu import ExportBackend
    from coreai_opt_gpu.quantization.fake_quantize import FakeQuantizeImplBase

    assert not compare(
        ".quantization.fake_quantize", "FakeQuantizeImplBase", Theirs, FakeQuantizeImplBase
    )
    for old, new in (("MIL", "CoreML"), ("MLIR", "CoreAI")):
        with pytest.warns(DeprecationWarning, match=f"{old} is deprecated"):
            assert getattr(ExportBackend, old) is getattr(ExportBackend, new)
        with pytest.warns(DeprecationWarning):
            assert getattr(TheirBackend, old) is getattr(TheirBackend, new)
    assert ExportBackend._TORCH is ExportBackend.Torch
    assert ExportBackend(TheirBackend._TORCH.value) is ExportBackend.Torch
    assert ExportBackend(TheirBackend.CoreAI.value) is ExportBackend.CoreAI
