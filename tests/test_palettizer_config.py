"""Palettizer configs: the API spec's examples, setters, presets and the dict/YAML round trip."""

import io
import textwrap

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from coreai_opt_gpu.palettization import (
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    OpKMeansPalettizerConfig,
    PalettizationSpec,
)
from coreai_opt_gpu.palettization.spec import PerGroupedChannelGranularity

W4_G16 = PalettizationSpec(granularity=PerGroupedChannelGranularity(axis=0, group_size=16))

API_YAML = textwrap.dedent("""\
    kmeans_palettization_config:
      global_config:
        op_state_spec:
          weight: {n_bits: 4, granularity: {type: per_grouped_channel, axis: 0, group_size: 16}}
      module_type_configs:
        torch.nn.modules.linear.Linear:
          op_state_spec:
            weight: {n_bits: 8, granularity: {type: per_tensor}}
    """)


def test_default_config_equivalences():
    default = KMeansPalettizerConfig()
    explicit = KMeansPalettizerConfig(global_config=ModuleKMeansPalettizerConfig())
    spelled = KMeansPalettizerConfig(
        global_config=ModuleKMeansPalettizerConfig(
            op_state_spec={"weight": PalettizationSpec(), "in_proj_weight": PalettizationSpec()}
        )
    )
    assert default == explicit == spelled
    assert OpKMeansPalettizerConfig().op_state_spec == spelled.global_config.op_state_spec
    module = default.global_config
    assert (module.enable_fast_kmeans_mode, module.rounding_precision) == (True, 4)
    assert module.op_type_config == module.op_name_config == module.module_state_spec == {}


def test_only_module_type_configs_leave_other_modules_alone():
    """Documented rule: no global config is created when only type/name configs are given."""
    by_type = KMeansPalettizerConfig(
        module_type_configs={nn.Linear: ModuleKMeansPalettizerConfig()}
    )
    assert by_type.global_config is None
    assert list(by_type.module_type_configs) == ["torch.nn.modules.linear.Linear"]
    by_name = KMeansPalettizerConfig(module_name_configs={"layers\\.0": None})
    assert by_name.global_config is None
    assert KMeansPalettizerConfig(global_config=None).global_config is None


@pytest.mark.parametrize("key", [nn.Linear, "torch.nn.Linear", "torch.nn.modules.linear.Linear"])
def test_module_type_keys_are_canonical(key):
    config = KMeansPalettizerConfig().set_module_type(key, None)
    assert config.module_type_configs == {"torch.nn.modules.linear.Linear": None}


def test_presets_with_chaining():
    w4 = ModuleKMeansPalettizerConfig.presets.w4()
    assert w4.op_state_spec == {"weight": W4_G16, "in_proj_weight": W4_G16}
    w6 = ModuleKMeansPalettizerConfig.presets.w6(axis=1, group_size=8)
    assert w6.op_state_spec["weight"] == PalettizationSpec(
        n_bits=6, granularity=PerGroupedChannelGranularity(axis=1, group_size=8)
    )
    assert ModuleKMeansPalettizerConfig.presets.w8().op_state_spec[
        "in_proj_weight"
    ] == PalettizationSpec(n_bits=8)

    config = (
        KMeansPalettizerConfig.presets.w4()
        .set_module_type(nn.Conv2d, ModuleKMeansPalettizerConfig.presets.w8())
        .set_module_name(r"lm_head", None)
        .set_global(ModuleKMeansPalettizerConfig.presets.w6())
    )
    assert isinstance(config, KMeansPalettizerConfig)
    assert config.global_config == ModuleKMeansPalettizerConfig.presets.w6()
    assert (
        config.module_type_configs["torch.nn.modules.conv.Conv2d"]
        == ModuleKMeansPalettizerConfig.presets.w8()
    )
    assert config.module_name_configs == {"lm_head": None}
    assert (
        KMeansPalettizerConfig.presets.w8().global_config
        == ModuleKMeansPalettizerConfig.presets.w8()
    )


def test_api_yaml_example():
    config = KMeansPalettizerConfig.from_yaml(io.StringIO(API_YAML))
    assert config.global_config.op_state_spec == {"weight": W4_G16}
    linear = config.module_type_configs["torch.nn.modules.linear.Linear"]
    assert linear.op_state_spec == {"weight": PalettizationSpec(n_bits=8)}


@pytest.mark.parametrize(
    "make",
    [
        KMeansPalettizerConfig,
        lambda: KMeansPalettizerConfig.presets.w4(axis=1, group_size=32),
        lambda: KMeansPalettizerConfig(module_type_configs={nn.Linear: None}),
        lambda: KMeansPalettizerConfig(
            global_config=ModuleKMeansPalettizerConfig(
                enable_fast_kmeans_mode=False,
                rounding_precision=2,
                op_state_spec={"*": PalettizationSpec(cluster_dim=2, lut_qspec={"dtype": "int8"})},
                op_type_config={
                    "aten.linear.default": OpKMeansPalettizerConfig(op_state_spec=None)
                },
                op_name_config={r"fc\d": None},
                module_state_spec={"weight": PalettizationSpec(n_bits=2)},
            ),
            module_name_configs={r"layers\.\d+\.attn": ModuleKMeansPalettizerConfig.presets.w8()},
        ),
    ],
    ids=["default", "w4-axis1", "type-only", "everything"],
)
def test_dict_and_yaml_round_trip(make, tmp_path):
    config = make()
    assert KMeansPalettizerConfig.from_dict(config.to_dict()) == config
    assert list(config.to_dict()) == ["kmeans_palettization_config"]
    path = tmp_path / "config.yaml"
    text = config.to_yaml(path)
    assert path.read_text() == text
    assert KMeansPalettizerConfig.from_yaml(path) == config
    assert KMeansPalettizerConfig.from_yaml(str(path)) == config
    stream = io.StringIO()
    config.to_yaml(stream)
    assert KMeansPalettizerConfig.from_yaml(io.StringIO(stream.getvalue())) == config


def test_granularity_is_written_with_its_type():
    grouped = KMeansPalettizerConfig.presets.w4().to_dict()
    weight = grouped["kmeans_palettization_config"]["global_config"]["op_state_spec"]["weight"]
    assert weight["granularity"] == {"type": "per_grouped_channel", "axis": 0, "group_size": 16}


def test_upstream_written_yaml_loads():
    """coreai_opt 0.3.0's to_dict adds neutral keys; its YAML must load here."""
    upstream = textwrap.dedent("""\
        kmeans_palettization_config:
          global_config:
            enable_fast_kmeans_mode: true
            module_input_spec: {}
            module_output_spec: {}
            module_state_spec: {}
            op_input_spec: {'*': null}
            op_name_config: {}
            op_output_spec: {'*': null}
            op_state_spec:
              weight:
                cluster_dim: 1
                enable_per_channel_scale: false
                granularity: {axis: 0, group_size: 16, type: per_grouped_channel}
                lut_qspec: null
                n_bits: 4
                training_strategy_spec: {type: default}
            op_type_config: {}
            pat_schedule: null
            rounding_precision: 4
          module_name_configs: {}
          module_type_configs: {}
        """)
    config = KMeansPalettizerConfig.from_yaml(io.StringIO(upstream))
    assert config.global_config.op_state_spec == {"weight": W4_G16}


def test_yaml_edge_cases():
    with pytest.warns(UserWarning, match="empty"):
        assert KMeansPalettizerConfig.from_yaml(io.StringIO("")) is None
    with pytest.raises(ValueError, match="mapping"):
        KMeansPalettizerConfig.from_yaml(io.StringIO("- 1\n- 2\n"))
    with pytest.raises(ValueError, match="kmeans_palettization_config"):
        KMeansPalettizerConfig.from_dict({"quantization_config": {}})


def test_fast_mode_rejects_vector_specs():
    vector = PalettizationSpec(cluster_dim=2)
    with pytest.raises(ValidationError, match=r"op_state_spec\['weight'\] has cluster_dim=2"):
        ModuleKMeansPalettizerConfig(op_state_spec={"weight": vector})
    with pytest.raises(ValidationError, match="op_type_config"):
        ModuleKMeansPalettizerConfig(
            op_type_config={"linear": OpKMeansPalettizerConfig(op_state_spec={"weight": vector})}
        )
    ok = ModuleKMeansPalettizerConfig(
        op_state_spec={"weight": vector}, enable_fast_kmeans_mode=False
    )
    with pytest.raises(ValidationError, match="cluster_dim"):
        ok.enable_fast_kmeans_mode = True
    with pytest.raises(ValidationError, match="rounding_precision"):
        ModuleKMeansPalettizerConfig(rounding_precision=0)


@pytest.mark.parametrize(
    "cls", [KMeansPalettizerConfig, ModuleKMeansPalettizerConfig, OpKMeansPalettizerConfig]
)
def test_config_classes_are_final(cls):
    with pytest.raises(TypeError, match="marked final"):
        type("Custom", (cls,), {})


def test_op_type_spellings():
    config = ModuleKMeansPalettizerConfig(
        op_type_config={
            "aten.linear.default": None,
            "conv_transpose2d": None,
            "aten.conv2d.default": None,
        }
    )
    assert set(config.op_type_config) == {"linear", "conv_transpose2d", "conv2d"}
    with pytest.raises(ValidationError, match="known op types: linear, conv1d"):
        ModuleKMeansPalettizerConfig(op_type_config={"matmul": None})


def test_bad_regex_and_unknown_fields():
    with pytest.raises(ValidationError, match="op_name_config key '\\(' is not a valid regex"):
        ModuleKMeansPalettizerConfig(op_name_config={"(": None})
    with pytest.raises(ValidationError, match="module_name_configs"):
        KMeansPalettizerConfig(module_name_configs={"[": None})
    with pytest.raises(ValidationError, match="Extra inputs"):
        ModuleKMeansPalettizerConfig(op_state_specs={})
    with pytest.raises(ValidationError, match="op_input_spec"):
        ModuleKMeansPalettizerConfig(op_input_spec={"*": {"dtype": "int8"}})


def test_setters_validate():
    config = KMeansPalettizerConfig()
    with pytest.raises(ValidationError):
        config.set_global({"op_state_spec": {"weight": {"n_bits": 5}}})
    with pytest.raises(TypeError, match="class or a dotted name"):
        config.set_module_type(3, None)
    config.set_module_type(torch.nn.Embedding, {"op_state_spec": {"weight": {"n_bits": 2}}})
    spec = config.module_type_configs["torch.nn.modules.sparse.Embedding"].op_state_spec["weight"]
    assert spec.n_bits == 2
