"""Quantizer: fake-quantize modules, the fields every spec honours, calibration, QAT, toggles,
errors and eager mode. Graph structure and finalize are in test_quantizer_graph.py, the
differential checks against coreai_opt in test_parity_quantizer.py, the joint flow in
test_joint_flow.py.

Tolerances: fake quantization is exact against its own quantize/dequantize arithmetic (same
float32 operations); model outputs after finalize are exact against the prepared model."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coreai_opt_gpu import ExportBackend
from coreai_opt_gpu.config.spec import CompressionTargetTensor
from coreai_opt_gpu.inspection import bits_per_weight
from coreai_opt_gpu.quantization import (
    ExecutionMode,
    ModuleQuantizerConfig,
    QATSchedule,
    QuantizationSpec,
    Quantizer,
    QuantizerConfig,
)
from coreai_opt_gpu.quantization.config import OpQuantizerConfig
from coreai_opt_gpu.quantization.fake_quantize import FakeQuantize, FakeQuantizeImplBase
from coreai_opt_gpu.quantization.spec import (
    MovingAverageQParamsCalculator,
    QuantizationComponentFactory,
    StaticQParamsCalculator,
)

WEIGHT, ACTIVATION = CompressionTargetTensor.WEIGHT, CompressionTargetTensor.ACTIVATION
INT8 = QuantizationSpec(dtype="int8")


class ConvNet(nn.Module):
    """conv -> relu -> maxpool -> flatten -> linear -> linear (+ residual): the small conv +
    linear model the quantizer tests share."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(x))).flatten(1)
        y = self.fc(x)
        return self.head(self.fc2(y) + y)


def conv_net(seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet().eval()


def images(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def activations_only(spec: QuantizationSpec = INT8, **kwargs) -> QuantizerConfig:
    return QuantizerConfig(
        global_config=ModuleQuantizerConfig(
            op_state_spec=None, op_input_spec={"*": spec}, op_output_spec={"*": spec}
        ),
        **kwargs,
    )


def fake_quantizer(spec: QuantizationSpec, target=WEIGHT) -> FakeQuantizeImplBase:
    return QuantizationComponentFactory.create_fake_quantizer(spec, target)


# --- the fake-quantize module ------------------------------------------------------------------

PER_CHANNEL_0 = {"type": "per_channel", "axis": 0}
BLOCKS = {"type": "per_block", "axis": 1, "block_size": 8}
FQ_SPECS = {
    "int8-per-tensor": ({"dtype": "int8"}, (7, 33)),
    "int8-per-channel": ({"dtype": "int8", "granularity": PER_CHANNEL_0}, (6, 5, 3)),
    "uint8-asym-axis1": (
        {
            "dtype": "uint8",
            "qscheme": "asymmetric",
            "granularity": {"type": "per_channel", "axis": 1},
        },
        (4, 9),
    ),
    "int4-per-block": ({"dtype": "int4", "granularity": {**BLOCKS, "block_size": 4}}, (6, 12)),
    "int4-minval": ({"dtype": "int4", "qscheme": "asymmetric", "qformulation": "minval"}, (5, 7)),
    "int8-clipping": (
        {"qscheme": "symmetric_with_clipping", "granularity": {"type": "per_channel", "axis": -1}},
        (3, 4, 5),
    ),
    "fp8-e4m3": ({"dtype": "float8_e4m3fn"}, (9, 10)),
    "fp8-e5m2-per-channel": ({"dtype": "float8_e5m2", "granularity": PER_CHANNEL_0}, (4, 6)),
    "fp8-e8m0-blocks": (
        {"dtype": "float8_e4m3fn", "scale_dtype": "float8_e8m0fnu", "granularity": BLOCKS},
        (2, 16),
    ),
    "fp4": ({"dtype": "float4_e2m1fn", "granularity": BLOCKS}, (3, 16)),
}


@pytest.mark.parametrize(("fields", "shape"), FQ_SPECS.values(), ids=FQ_SPECS.keys())
def test_fused_fake_quantize_equals_quantize_then_dequantize(fields, shape):
    """Exact: the fused op (blocks laid out as channels, minval as a shift) against the
    module's own quantize/dequantize (real codes), and the codes lie in the dtype's range."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3
    fake = fake_quantizer(QuantizationSpec(**fields))
    out = fake(x)
    scale, zero_point, minval = fake.calculate_qparams()
    codes = fake.quantize(x, scale, zero_point, minval, cast_to_target_dtype=False)
    assert torch.equal(out, fake.dequantize(codes, scale, zero_point, minval))
    granularity = fields.get("granularity", {"type": "per_tensor"})["type"]
    plain = fields.get("dtype", "int8") in ("int8", "uint8") and "qformulation" not in fields
    if plain and "clipping" not in fields.get("qscheme", "") and granularity != "per_block":
        # independent of the module's own arithmetic: torch's fake quantization, same params
        zp = torch.zeros_like(scale) if zero_point is None else zero_point
        if granularity == "per_tensor":
            expected = torch.fake_quantize_per_tensor_affine(
                x, float(scale), int(zp), fake.quant_min, fake.quant_max
            )
        else:
            axis = fields["granularity"]["axis"] % x.dim()
            expected = torch.fake_quantize_per_channel_affine(
                x, scale.reshape(-1), zp.reshape(-1).int(), axis, fake.quant_min, fake.quant_max
            )
        differ = out != expected  # torch multiplies by 1/scale: a rare tie may round apart
        assert float(differ.float().mean()) < 0.01
        torch.testing.assert_close(out, expected, rtol=0, atol=float(scale.max()) * 1.001)
    if fields.get("scale_dtype"):
        assert torch.equal(scale, torch.exp2(torch.round(torch.log2(scale))))  # powers of two
    if fields.get("qformulation") == "minval":
        steps = (out - minval) / scale
        torch.testing.assert_close(steps, torch.round(steps), rtol=0, atol=1e-4)


def test_gradients_pass_where_not_clamped():
    spec = QuantizationSpec(dtype="int8", float_range=[-1.0, 1.0])
    fake = fake_quantizer(spec, ACTIVATION)
    x = torch.tensor([-3.0, -0.5, 0.25, 0.9, 2.0], requires_grad=True)
    fake(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_default_calculator_resolves_by_target():
    """A bare QuantizationSpec(): static for weights, moving average for activations."""
    assert type(fake_quantizer(QuantizationSpec(), WEIGHT).qparams_calculator) is (
        StaticQParamsCalculator
    )
    assert type(fake_quantizer(QuantizationSpec(), ACTIVATION).qparams_calculator) is (
        MovingAverageQParamsCalculator
    )
    model = conv_net()
    quantizer = Quantizer(model, activations_only(QuantizationSpec()))
    prepared = quantizer.prepare((images(),))
    calculators = {type(f.qparams_calculator) for f in quantizer._quantizer.fake_quantizers()}
    assert calculators == {MovingAverageQParamsCalculator}
    assert isinstance(prepared, torch.fx.GraphModule)


def test_toggles_follow_torchao_api():
    from torchao.quantization.pt2e import disable_observer, enable_fake_quant

    model = conv_net()
    quantizer = Quantizer(model)
    prepared = quantizer.prepare((images(),))
    fakes = quantizer._quantizer.fake_quantizers()
    assert all(isinstance(f, FakeQuantize) for f in fakes)
    quantizer.disable_fake_quant()
    assert torch.equal(prepared(images(seed=3)), model(images(seed=3)))
    prepared.apply(enable_fake_quant)  # torchao's own functions see our modules
    assert all(int(f.fake_quant_enabled[0]) for f in fakes)
    prepared.apply(disable_observer)
    assert not any(int(f.observer_enabled[0]) for f in fakes)
    quantizer.disable_fake_quant(prepared.fc2)  # one module: its weight and its output
    off = [f for f in fakes if not int(f.fake_quant_enabled[0])]
    assert sorted(f.tensor_fqn for f in off) == ["fc2.weight", "linear_1"]
    quantizer.enable_observer(prepared.fc2)
    on = [f.tensor_fqn for f in fakes if int(f.observer_enabled[0])]
    assert sorted(on) == ["fc2.weight", "linear_1"]
    with pytest.raises(ValueError, match="not a submodule"):
        quantizer.enable_observer(nn.Linear(2, 2))


# --- fields the specs carry --------------------------------------------------------------------


def test_float_range_clips_outputs():
    """float_range [-1, 1] on every activation: outputs stay on the int8 grid of [-1, 1]
    (symmetric: -128 / 127.5 .. 127 / 127.5), where the model's own go beyond 2 and the old
    hook-based quantizer let them through."""
    model = conv_net()
    x = images(64) * 4
    assert float(model(x).abs().max()) > 2
    spec = QuantizationSpec(dtype="int8", float_range=[-1.0, 1.0])
    quantizer = Quantizer(model, activations_only(spec))
    prepared = quantizer.prepare((x,))
    with torch.no_grad(), quantizer.calibration_mode():
        prepared(x)
    out = prepared(x)
    assert float(out.max()) <= 127 / 127.5 + 1e-6 and float(out.min()) >= -128 / 127.5 - 1e-6


def test_per_block_weights_and_presets():
    model = conv_net()
    quantizer = Quantizer(model, QuantizerConfig.presets.w4_per_block(block_size=8))
    with pytest.warns(UserWarning, match="conv.weight.*does not fit the block size"):
        prepared = quantizer.prepare((images(),))
    fakes = {f.tensor_fqn: f for f in quantizer._quantizer.fake_quantizers()}
    assert sorted(fakes) == ["fc.weight", "fc2.weight", "head.weight"]  # conv: 1 input channel
    scale = fakes["fc.weight"].calculate_qparams()[0]
    assert scale.shape == (16, 64 // 8)  # one scale per 8 input channels of each output row
    weight = prepared.fc.weight.detach()
    codes = fakes["fc.weight"].quantize(weight, *fakes["fc.weight"].calculate_qparams())
    assert codes.dtype == torch.int8 and int(codes.min()) >= -8 and int(codes.max()) <= 7
    w8 = QuantizerConfig.presets.w8()
    assert w8.global_config.op_input_spec == {"*": None}
    assert w8.global_config.op_state_spec["weight"].granularity.axis is None  # resolved per op
    w4 = ModuleQuantizerConfig.presets.w4(axis=1)
    assert w4.op_state_spec["weight"].dtype == torch.int4


def test_weight_axis_defaults_per_op():
    """axis=None: output channels for linear/conv (0), transposed convolutions (1)."""
    model = nn.Sequential(nn.ConvTranspose2d(2, 6, 3), nn.Flatten(), nn.Linear(6 * 25, 4)).eval()
    quantizer = Quantizer(model, QuantizerConfig.presets.w8())
    quantizer.prepare((torch.randn(2, 2, 3, 3),))
    scales = {
        f.tensor_fqn: tuple(f.calculate_qparams()[0].shape)
        for f in quantizer._quantizer.fake_quantizers()
    }
    assert scales == {"0.weight": (1, 6, 1, 1), "2.weight": (4, 1)}


# --- calibration -------------------------------------------------------------------------------


def test_calibration_starts_from_its_first_batch():
    """The example input seeds the ranges at prepare; the first calibration batch replaces
    that seed, later ones (and later calibration blocks) fold in with factor 0.01."""
    model = conv_net()
    example, first, second = images(seed=1), images(seed=2) * 3, images(seed=3)
    quantizer = Quantizer(model, activations_only())
    prepared = quantizer.prepare((example,))
    node = next(n for n in prepared.graph.nodes if n.op == "call_module")  # the input's
    calculator = prepared.get_submodule(node.target).qparams_calculator
    assert float(calculator.running_max) == pytest.approx(float(example.max()))
    with torch.no_grad(), quantizer.calibration_mode():
        prepared(first)
    assert float(calculator.running_max) == pytest.approx(float(first.max()))
    with torch.no_grad(), quantizer.calibration_mode():
        prepared(second)
    expected = float(first.max()) + 0.01 * (float(second.max()) - float(first.max()))
    assert float(calculator.running_max) == pytest.approx(expected)


def test_calibration_observes_with_weights_quantized_activations_not():
    model = conv_net()
    quantizer = Quantizer(model)
    prepared = quantizer.prepare((images(),))
    seen = {}
    with quantizer.calibration_mode():
        for fake in quantizer._quantizer.fake_quantizers():
            seen[fake.tensor_fqn] = (int(fake.observer_enabled[0]), int(fake.fake_quant_enabled[0]))
        assert not prepared.training
    assert seen["fc.weight"] == (1, 1)
    assert seen["x"] == (1, 0)  # the input's activation quantizer
    after = {
        (int(f.observer_enabled[0]), int(f.fake_quant_enabled[0]))
        for f in quantizer._quantizer.fake_quantizers()
    }
    assert after == {(0, 1)}


# --- QAT ---------------------------------------------------------------------------------------


def test_training_mode_trains_through_fake_quantization():
    torch.manual_seed(0)
    model = conv_net()
    x, labels = images(64), torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
    quantizer = Quantizer(model, QuantizerConfig.presets.w4())
    prepared = quantizer.prepare((x,))
    optimizer = torch.optim.Adam(prepared.parameters(), 1e-2)
    losses = []
    with quantizer.training_mode():
        assert prepared.training
        for _ in range(15):
            loss = F.cross_entropy(prepared(x), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
    assert not prepared.training
    assert losses[-1] < 0.7 * losses[0]
    with pytest.warns(UserWarning, match="no qat_schedule"), quantizer.training_mode():
        quantizer.step()
    with pytest.raises(RuntimeError, match="inside a training_mode"):
        quantizer.step()


def test_qat_schedule_drives_observers_and_fake_quant():
    schedule = QATSchedule(enable_observer=1, enable_fake_quant=2, disable_observer=3)
    config = QuantizerConfig(
        global_config=ModuleQuantizerConfig(op_input_spec=None, op_output_spec=None),
        module_name_configs={
            "fc": ModuleQuantizerConfig(qat_schedule=schedule, op_output_spec=None)
        },
    )
    model = conv_net()
    quantizer = Quantizer(model, config)
    quantizer.prepare((images(),))
    fakes = {f.tensor_fqn: f for f in quantizer._quantizer.fake_quantizers()}
    scheduled = [fakes["fc.weight"], *[f for n, f in fakes.items() if n == "flatten"]]
    states = []
    with quantizer.training_mode():
        for _ in range(4):
            states.append(
                [(int(f.observer_enabled[0]), int(f.fake_quant_enabled[0])) for f in scheduled]
            )
            quantizer.step()
    assert [s[0] for s in states] == [(0, 0), (1, 0), (1, 1), (0, 1)]
    assert all(len(set(s)) == 1 for s in states)  # the module's input quantizer follows too
    assert int(fakes["fc2.weight"].observer_enabled[0]) == 0  # unscheduled: default on exit
    with pytest.raises(RuntimeError, match="qat_schedule"):
        quantizer.disable_observer()
    with pytest.raises(RuntimeError, match="Nested"), quantizer.training_mode():  # noqa: SIM117
        with quantizer.training_mode():  # the nested entry is what raises
            pass
    with pytest.raises(ValueError, match="enable_fake_quant"):
        QATSchedule(enable_observer=5, enable_fake_quant=2)


# --- errors ------------------------------------------------------------------------------------


def test_quantizer_errors(monkeypatch):
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        Quantizer([1, 2])
    model = conv_net()
    quantizer = Quantizer(model)
    with pytest.raises(RuntimeError, match="call prepare first"), quantizer.calibration_mode():
        pass
    with pytest.raises(RuntimeError, match="not prepared"):
        quantizer.finalize()
    with pytest.raises(TypeError, match="must be a tuple"):
        quantizer.prepare(images())
    with pytest.raises(ValueError, match="cannot be empty"):
        quantizer.prepare(())
    quantizer.prepare((images(),))
    with pytest.raises(RuntimeError, match="already been prepared"):
        quantizer.prepare((images(),))
    with pytest.raises(ValueError, match="CoreML is not available"):
        quantizer.finalize(backend=ExportBackend.CoreML)
    with pytest.raises(ValueError, match="mmap_dir is only supported with backend=Ex"):
        quantizer.finalize(backend=ExportBackend.Torch, mmap_dir="x")
    monkeypatch.setitem(__import__("sys").modules, "coreai_torch._compression.custom_layers", None)
    with pytest.raises(ValueError, match=r"pip install 'coreai-opt-gpu\[coreai\]'"):
        quantizer.finalize()  # default backend: Core AI
    with pytest.raises(NotImplementedError, match="integer indices or"):
        Quantizer(
            conv_net(),
            activations_only().set_global(ModuleQuantizerConfig(op_input_spec={"x": INT8})),
        )
    with pytest.raises(NotImplementedError, match="one quantizable output"):
        Quantizer(
            conv_net(),
            QuantizerConfig(global_config=ModuleQuantizerConfig(op_output_spec={1: INT8})),
        )
    with pytest.raises(RuntimeError, match="names a state tensor"):
        linear_input_1 = ModuleQuantizerConfig(op_input_spec={1: INT8})
        Quantizer(conv_net(), QuantizerConfig(global_config=linear_input_1)).prepare((images(),))
    with pytest.raises(ValueError, match="needs an explicit axis"):
        per_channel = QuantizationSpec(granularity={"type": "per_channel"})
        Quantizer(conv_net(), activations_only(per_channel)).prepare((images(),))


def test_refuses_a_model_the_palettizer_has_not_finalized():
    from coreai_opt_gpu.palettization import KMeansPalettizer

    model = conv_net()
    KMeansPalettizer(model).prepare((images(),))
    with pytest.raises(RuntimeError, match="finalize"):
        Quantizer(model).prepare((images(),))


def test_warns_for_config_entries_matching_nothing():
    config = QuantizerConfig().set_module_name(r"encoder\..*", None)
    with pytest.warns(UserWarning, match=r"module_name_configs\['encoder"):
        Quantizer(conv_net(), config).prepare((images(),))


# --- eager mode --------------------------------------------------------------------------------


def eager(config: QuantizerConfig) -> QuantizerConfig:
    return config.set_execution_mode(ExecutionMode.EAGER)


@pytest.mark.parametrize(
    "backend", [ExportBackend.Torch, ExportBackend.CoreAI], ids=["torch", "coreai"]
)
def test_eager_mode_prepare_calibrate_finalize(backend):
    if backend == ExportBackend.CoreAI:
        pytest.importorskip("coreai_torch._compression.custom_layers")
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    quantizer = Quantizer(model, eager(QuantizerConfig()))
    prepared = quantizer.prepare((x,))
    assert prepared is model and not isinstance(prepared, torch.fx.GraphModule)
    assert isinstance(model[0].parametrizations.weight[0], FakeQuantizeImplBase)
    with torch.no_grad(), quantizer.calibration_mode():
        prepared(x)
    with torch.no_grad():
        expected = prepared(x)
    finalized = quantizer.finalize(backend=backend)
    with torch.no_grad():
        assert torch.equal(finalized(x), expected)
    assert model[0].parametrizations.weight.original.numel() == 0  # dense weight freed


def test_eager_mode_rejects_functional_activation_specs_and_quantizes_functional_weights():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 8))

        def forward(self, x):
            return F.linear(x, self.w)

    model = nn.Sequential(Functional()).eval()
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="cannot quantize the activations"):
        Quantizer(model, eager(QuantizerConfig())).prepare((x,))
    w8 = QuantizerConfig.presets.w8().global_config.op_state_spec["weight"]
    by_name = ModuleQuantizerConfig(
        op_input_spec=None, op_output_spec=None, op_state_spec={"w": w8}
    )
    quantizer = Quantizer(model, eager(QuantizerConfig(global_config=by_name)))
    quantizer.prepare((x,))
    assert [f.tensor_fqn for f in quantizer._quantizer.fake_quantizers()] == ["0.w"]


def test_bits_per_weight_sizes_an_eager_quantized_model():
    model = nn.Sequential(nn.Linear(8, 16)).eval()
    Quantizer(model, eager(QuantizerConfig.presets.w4())).prepare((torch.randn(2, 8),))
    result = bits_per_weight(model)
    # 128 weights at 4 bits + 16 fp32 scales + 16 fp32 biases, over 144 tensors' elements
    assert result.total_bits == 128 * 4 + 16 * 32 + 16 * 32
    assert OpQuantizerConfig().op_state_spec["weight"].granularity.axis == 0


def test_eager_module_boundary_specs():
    model = nn.Sequential(nn.Sequential(nn.Linear(8, 8), nn.Tanh()), nn.Linear(8, 4)).eval()
    uint8 = QuantizationSpec(dtype="uint8", qscheme="asymmetric")
    boundary = ModuleQuantizerConfig(module_input_spec={0: uint8}, module_output_spec={0: INT8})
    config = QuantizerConfig.presets.w8().set_module_name("0", boundary)
    quantizer = Quantizer(model, eager(config))
    quantizer.prepare((torch.randn(4, 8),))
    quantizers = model[0].activation_quantizers
    assert quantizers.inputs["0"].dtype == torch.uint8 and quantizers.output.dtype == torch.int8
    assert not hasattr(model[1], "activation_quantizers")  # w8: weights only
    with torch.no_grad():  # the hooks run: model[0]'s output lies on its int8 grid
        x = torch.randn(4, 8)
        out = model[0](x)
        scale, zero_point, *_ = quantizers.output.calculate_qparams()
        codes = out / scale + (0 if zero_point is None else zero_point)
        torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-3)
        plain = model[0][1](model[0][0](x))
        assert not torch.allclose(out, plain, rtol=0, atol=1e-6)  # not the float output
    with pytest.raises(ValueError, match="by position"):
        star = ModuleQuantizerConfig(module_input_spec={"*": uint8})
        Quantizer(
            nn.Sequential(nn.Linear(2, 2)), eager(QuantizerConfig().set_module_name("0", star))
        ).prepare((torch.randn(1, 2),))


def test_eager_specs_it_cannot_place_warn_naming_them():
    """Keys eager mode has nowhere to put (a second module output, a Linear's input 1) warn,
    naming the site and the keys, instead of being dropped silently (op outputs other than 0
    are refused in both modes already)."""
    cases = [
        (ModuleQuantizerConfig(module_output_spec={0: INT8, 1: INT8}),
         r"module_output_spec of '0': keys \[1\] are not applied in eager mode"),
        (ModuleQuantizerConfig(op_input_spec={0: INT8, 1: INT8}),
         r"op_input_spec of 0\.linear: keys \[1\] .*nn\.Linear quantizes its inputs at "
         r"positions 0"),
    ]  # fmt: skip
    for module_config, message in cases:
        model = nn.Sequential(nn.Linear(8, 8)).eval()
        config = QuantizerConfig().set_module_name("0", module_config)
        with pytest.warns(UserWarning, match=message):
            Quantizer(model, eager(config)).prepare((torch.randn(2, 8),))
    with warnings.catch_warnings():  # what eager mode places: no warning
        warnings.simplefilter("error")
        model = nn.Sequential(nn.Linear(8, 8)).eval()
        placed = ModuleQuantizerConfig(op_input_spec={0: INT8}, op_output_spec={0: INT8})
        Quantizer(model, eager(QuantizerConfig().set_module_name("0", placed))).prepare(
            (torch.randn(2, 8),)
        )


def test_forward_reads_its_toggles_only_when_they_change():
    """The on/off buffers are read from the device once per change (their version counter),
    not at every forward; every write through the toggles or load_state_dict is seen."""
    fake = fake_quantizer(QuantizationSpec(dtype="int8"))
    x = torch.randn(4, 8)
    quantized = fake(x)
    assert not torch.equal(quantized, x)
    fake.disable_fake_quant()
    assert torch.equal(fake(x), x)
    fake.enable_fake_quant()
    assert torch.equal(fake(x), quantized)
    state = fake.state_dict()
    state["fake_quant_enabled"] = torch.tensor([0], dtype=torch.uint8)
    fake.load_state_dict(state)
    assert torch.equal(fake(x), x)
    fake.fake_quant_enabled[0] = 1  # an in-place write bumps the version: seen
    assert torch.equal(fake(x), quantized)
    fake.fake_quant_enabled.data[0] = 0  # .data bypasses the version counter: the cache holds
    assert torch.equal(fake(x), quantized)


@pytest.mark.parametrize("mode", ["graph", "eager"])
def test_a_prepare_that_quantizes_nothing_warns(mode):
    model = nn.Sequential(nn.Linear(8, 8)).eval()
    misspelled = ModuleQuantizerConfig(
        op_state_spec={"wieght": QuantizationSpec()}, op_input_spec=None, op_output_spec=None
    )
    config = QuantizerConfig(global_config=misspelled)
    if mode == "eager":
        config = config.set_execution_mode(ExecutionMode.EAGER)
    quantizer = Quantizer(model, config)
    with pytest.warns(UserWarning, match="prepare quantized nothing in this Sequential"):
        quantizer.prepare((torch.randn(2, 8),))
