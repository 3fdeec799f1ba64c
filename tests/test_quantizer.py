"""Quantizer: observers, fake quantization on a model, and the joint palettize-then-quantize
flow on a small model trained in the test."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coreai_opt_gpu import ExportBackend
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
from coreai_opt_gpu.quantization.fake_quantize import FakeQuantize
from coreai_opt_gpu.quantization.spec import default_activation_quantization_spec
from tests.test_calibration import trained  # noqa: F401 - the shared trained-MLP fixture

INT8 = QuantizationSpec()
ACTIVATIONS_ONLY = QuantizerConfig(
    global_config=ModuleQuantizerConfig(
        op_state_spec=None, op_input_spec={"*": INT8}, op_output_spec={"*": INT8}
    )
)


def test_moving_average_observer_starts_from_the_first_batch():
    quantizer = FakeQuantize(default_activation_quantization_spec())
    quantizer.observe(torch.tensor([-1.0, 2.0]))
    assert (float(quantizer.low), float(quantizer.high)) == (-1.0, 2.0)
    quantizer.observe(torch.tensor([-3.0, 4.0]))
    assert float(quantizer.low) == pytest.approx(-1.02)  # -1 + 0.01 * (-3 - -1)
    assert float(quantizer.high) == pytest.approx(2.02)
    static = FakeQuantize(INT8)
    static.observe(torch.tensor([-1.0, 2.0]))
    static.observe(torch.tensor([-0.5, 0.5]))
    assert (float(static.low), float(static.high)) == (-0.5, 0.5)  # static: the latest range


def test_weights_on_their_per_channel_grid_and_activations_wait_for_calibration():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(64, 8)
    dense = model[0].weight.detach().clone()
    quantizer = Quantizer(model)  # default: int8 per-channel weights, int8 activations
    quantizer.prepare()
    weight = model[0].weight.detach()
    scale = dense.abs().amax(1, keepdim=True) / 127.5
    torch.testing.assert_close(weight / scale, torch.round(weight / scale), rtol=0, atol=1e-4)
    assert float((weight - dense).abs().max()) <= float(scale.max()) * 0.5001
    with torch.no_grad():
        before = model(x)  # activations pass through until calibrated
        reference = F.linear(
            F.relu(F.linear(x, model[0].weight, model[0].bias)), model[2].weight, model[2].bias
        )
        assert torch.equal(before, reference)
        with quantizer.calibration_mode():
            model(x)
        after = model(x)
    output = model[2].output_quantizer
    scale, _ = output.qparams()
    torch.testing.assert_close(after / scale, torch.round(after / scale), rtol=0, atol=1e-4)
    assert float((after - before).norm() / before.norm()) < 0.05
    assert quantizer.finalize() is model


def accuracy(model, inputs, labels):
    with torch.no_grad():
        return float((model(inputs).argmax(1) == labels).float().mean())


def test_joint_palettize_then_quantize_flow(trained):  # noqa: F811 - pytest fixture
    model, inputs, labels = trained
    float_accuracy = accuracy(model, inputs, labels)
    joint = copy.deepcopy(model)
    lut_int8 = PalettizationSpec(
        n_bits=4,
        lut_qspec={"dtype": "int8"},
        granularity={"type": "per_grouped_channel", "axis": 0, "group_size": 4},
    )
    palettizer = KMeansPalettizer(
        joint,
        KMeansPalettizerConfig(
            global_config=ModuleKMeansPalettizerConfig(op_state_spec={"weight": lut_int8})
        ),
    )
    palettizer.prepare()
    palettizer.finalize(backend=ExportBackend.Torch)
    palettized_weights = [layer.weight.detach().clone() for layer in (joint[0], joint[2], joint[4])]

    quantizer = Quantizer(joint, ACTIVATIONS_ONLY)
    quantizer.prepare()
    with torch.no_grad(), quantizer.calibration_mode():
        for start in range(0, 1024, 128):
            joint(inputs[start : start + 128])
    quantizer.finalize(backend=ExportBackend.Torch)

    for layer, weight in zip((joint[0], joint[2], joint[4]), palettized_weights, strict=True):
        assert torch.equal(layer.weight, weight)  # op_state_spec=None: weights left alone
    joint_accuracy = accuracy(joint, inputs, labels)
    assert joint_accuracy >= float_accuracy - 0.03  # measured: 98.88% float, 98.58% joint
    with torch.no_grad():
        reference, output = model(inputs), joint(inputs)
    assert float((output - reference).norm() / reference.norm()) < 0.2


def test_quantizer_errors():
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        Quantizer([1, 2])
    model = nn.Sequential(nn.Linear(4, 4))
    quantizer = Quantizer(model)
    with pytest.raises(RuntimeError, match="call prepare first"), quantizer.calibration_mode():
        pass
    with pytest.raises(RuntimeError, match="not prepared"):
        quantizer.finalize()
    quantizer.prepare()
    with pytest.raises(RuntimeError, match="already prepared"):
        quantizer.prepare()
    with pytest.raises(RuntimeError, match="never observed"):
        quantizer.finalize()
    with pytest.raises(ValueError, match="backend=CoreAI is not available yet"):
        quantizer.finalize(backend=ExportBackend.CoreAI)
    per_block = QuantizerConfig(
        global_config=ModuleQuantizerConfig(
            op_state_spec={
                "weight": {"granularity": {"type": "per_block", "axis": 1, "block_size": 2}}
            }
        )
    )
    with pytest.raises(ValueError, match=r"per_block.*not supported yet"):
        Quantizer(nn.Sequential(nn.Linear(4, 4)), per_block).prepare()


def test_quantizer_warns_for_config_entries_matching_nothing():
    config = QuantizerConfig().set_module_name(r"encoder\..*", None)
    with pytest.warns(UserWarning, match=r"module_name_configs\['encoder"):
        Quantizer(nn.Sequential(nn.Linear(4, 4)), config).prepare()
