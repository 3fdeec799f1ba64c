"""Quantizer configs: defaults, precedence for inputs/outputs/states, execution mode, QAT
schedules, round trip."""

import io

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from coreai_opt_gpu.config import SpecSite, resolve_spec
from coreai_opt_gpu.quantization import (
    ExecutionMode,
    ModuleQuantizerConfig,
    OpQuantizerConfig,
    QATSchedule,
    QuantizationSpec,
    QuantizerConfig,
)
from coreai_opt_gpu.quantization.config import KVCacheQuantConfig
from coreai_opt_gpu.quantization.spec import (
    default_activation_quantization_spec,
    default_weight_quantization_spec,
)

INT8 = QuantizationSpec()
UINT8 = QuantizationSpec(dtype="uint8", qscheme="asymmetric")


def site(kind, name, module_name="fc", op_type="linear"):
    return SpecSite(module_name, nn.Linear, op_type, module_name, name, kind)


def test_defaults():
    config = QuantizerConfig()
    module = config.global_config
    assert module == ModuleQuantizerConfig()
    assert module.op_state_spec == {"weight": default_weight_quantization_spec()}
    assert module.op_input_spec == {"*": default_activation_quantization_spec()}
    assert module.op_output_spec == {"*": default_activation_quantization_spec()}
    assert OpQuantizerConfig().op_input_spec == module.op_input_spec
    with pytest.warns(UserWarning, match="left alone"):  # the documented rule, as palettizer
        type_only = QuantizerConfig(module_type_configs={nn.Linear: None})
    assert type_only.global_config == ModuleQuantizerConfig.disabled()


def test_joint_flow_config_leaves_weights_alone():
    config = QuantizerConfig(
        global_config=ModuleQuantizerConfig(
            op_state_spec=None, op_input_spec={"*": INT8}, op_output_spec={"*": INT8}
        )
    )
    assert resolve_spec(config, site("state", "weight")) is None
    assert resolve_spec(config, site("input", "0")) == INT8
    assert resolve_spec(config, site("output", "0")) == INT8


def test_precedence_for_activations():
    config = QuantizerConfig(
        global_config=ModuleQuantizerConfig(
            op_input_spec={"*": INT8},
            op_type_config={"conv2d": OpQuantizerConfig(op_input_spec={"*": UINT8})},
            op_name_config={r"head": OpQuantizerConfig(op_input_spec={"0": None, "*": UINT8})},
        ),
        module_name_configs={r"skip": None},
    )
    assert resolve_spec(config, site("input", "0")) == INT8
    assert resolve_spec(config, site("input", "0", op_type="conv2d")) == UINT8
    assert resolve_spec(config, site("input", "0", module_name="head")) is None
    assert resolve_spec(config, site("input", "1", module_name="head")) == UINT8
    assert resolve_spec(config, site("input", "0", module_name="skip")) is None


def test_setters_chain_and_round_trip(tmp_path):
    config = (
        QuantizerConfig()
        .set_module_type(nn.Conv2d, ModuleQuantizerConfig(op_output_spec=None))
        .set_module_name(r"lm_head", None)
        .set_global(ModuleQuantizerConfig(op_state_spec=None))
    )
    assert list(config.to_dict()) == ["quantization_config"]
    assert QuantizerConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "q.yaml"
    config.to_yaml(path)
    assert QuantizerConfig.from_yaml(path) == config
    assert QuantizerConfig.from_yaml(io.StringIO(config.to_yaml())) == config
    spec = config.to_dict()["quantization_config"]["global_config"]["op_input_spec"]["*"]
    assert spec["dtype"] == "int8"
    assert spec["qparam_calculator_cls"] == "moving_average"  # coreai_opt's registry key


def test_rejections():
    with pytest.raises(TypeError, match="marked final"):
        type("Custom", (QuantizerConfig,), {})
    # quantizer op types are not restricted to the palettizer's (coreai_opt knows many more)
    assert "bmm" in ModuleQuantizerConfig(op_type_config={"bmm": None}).op_type_config
    with pytest.raises(ValidationError):
        ModuleQuantizerConfig(op_input_spec={"*": {"dtype": torch.float16}})
    with pytest.raises(ValidationError, match="kv_cache_quant_configs"):
        cache = KVCacheQuantConfig(
            op_quantizer_config=OpQuantizerConfig(
                op_input_spec={1: INT8}, op_output_spec=None, op_state_spec=None
            )
        )
        QuantizerConfig(kv_cache_quant_configs={"cache_update": cache})
    with pytest.raises(ValidationError, match="exactly one key"):
        KVCacheQuantConfig(op_quantizer_config=OpQuantizerConfig(op_input_spec={"*": INT8}))


def test_execution_mode_and_upstream_fields():
    assert QuantizerConfig().execution_mode == ExecutionMode.GRAPH
    eager = QuantizerConfig(execution_mode="eager", preserved_attributes=["labels"])
    assert eager.execution_mode == ExecutionMode.EAGER and eager.preserved_attributes == ["labels"]
    assert QuantizerConfig().set_execution_mode("eager").execution_mode == ExecutionMode.EAGER
    with pytest.warns(DeprecationWarning, match="PT2E is deprecated"):
        assert ExecutionMode.PT2E is ExecutionMode.GRAPH
    with pytest.warns(DeprecationWarning, match="deprecated"):
        assert QuantizerConfig(execution_mode="pt2e").execution_mode == ExecutionMode.GRAPH
    with pytest.raises(ValidationError, match="Unknown execution_mode"):
        QuantizerConfig(execution_mode="fast")
    with pytest.raises(ValueError, match="Unknown execution_mode"):
        QuantizerConfig().set_execution_mode("fast")
    assert QuantizerConfig.from_dict(eager.to_dict()) == eager


def test_module_boundary_specs_and_qat_schedule_round_trip():
    schedule = QATSchedule(enable_observer=0, enable_fake_quant=10, disable_observer=20)
    config = QuantizerConfig().set_module_name(
        r"encoder",
        ModuleQuantizerConfig(
            module_input_spec={0: UINT8}, module_output_spec={"*": INT8}, qat_schedule=schedule
        ),
    )
    data = config.to_dict()
    module = data["quantization_config"]["module_name_configs"]["encoder"]
    assert module["qat_schedule"] == {
        "enable_observer": 0,
        "enable_fake_quant": 10,
        "disable_observer": 20,
    }
    assert QuantizerConfig.from_dict(data) == config
    assert QuantizerConfig.from_yaml(io.StringIO(config.to_yaml())) == config
    with pytest.raises(ValidationError, match="disable_observer"):
        QATSchedule(enable_observer=3, disable_observer=2)
