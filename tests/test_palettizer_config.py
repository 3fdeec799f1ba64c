"""Palettizer configs: the API spec's examples, setters, presets and the dict/YAML round trip."""

import io
import textwrap
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from torch import nn

from coreai_opt_gpu.palettization import (
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    OpKMeansPalettizerConfig,
    PalettizationSpec,
    PATSchedule,
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
    """Documented rule (a chosen deviation): no default global config when only type/name
    configs are given; the global config is the disabled one, and a warning says what
    coreai_opt 0.3.0 would have done."""
    with pytest.warns(UserWarning, match="coreai_opt 0.3.0 would apply the default"):
        by_type = KMeansPalettizerConfig(
            module_type_configs={nn.Linear: ModuleKMeansPalettizerConfig()}
        )
    assert by_type.global_config == ModuleKMeansPalettizerConfig.disabled()
    assert by_type.global_config.op_state_spec == {"*": None}
    assert list(by_type.module_type_configs) == ["torch.nn.modules.linear.Linear"]
    with pytest.warns(UserWarning, match="only module_name_configs given"):
        by_name = KMeansPalettizerConfig(module_name_configs={"layers\\.0": None})
    assert by_name.global_config == ModuleKMeansPalettizerConfig.disabled()
    assert KMeansPalettizerConfig(global_config=None).global_config.op_state_spec == {"*": None}


def test_none_configs_become_disabled_configs():
    config = KMeansPalettizerConfig(module_name_configs={"a": None}, global_config=None)
    disabled = ModuleKMeansPalettizerConfig.disabled()
    assert config.module_name_configs == {"a": disabled} and config.global_config == disabled
    module = ModuleKMeansPalettizerConfig(op_type_config={"linear": None}, op_state_spec=None)
    assert module.op_state_spec == {"*": None}
    assert module.op_type_config["linear"] == ModuleKMeansPalettizerConfig.disabled_op_config()
    assert module.op_type_config["linear"].op_state_spec == {"*": None}


def test_module_type_keys_are_fully_qualified_names_kept_as_written():
    config = KMeansPalettizerConfig().set_module_type(nn.Linear, None)
    assert list(config.module_type_configs) == ["torch.nn.modules.linear.Linear"]
    # an alias is kept as written and matches nothing (exact class names), as in coreai_opt;
    # prepare warns about it with the name it should have been
    alias = KMeansPalettizerConfig().set_module_type("torch.nn.Linear", None)
    assert list(alias.module_type_configs) == ["torch.nn.Linear"]
    with pytest.raises(ValueError, match="Expected fully-qualified name, got Linear"):
        KMeansPalettizerConfig().set_module_type("Linear", None)
    with pytest.raises(TypeError, match=r"fully-qualified strings or nn\.Module types"):
        KMeansPalettizerConfig().set_module_type(3, None)


def test_presets_with_chaining():
    w4 = ModuleKMeansPalettizerConfig.presets.w4()
    assert w4.op_state_spec == {"weight": W4_G16, "in_proj_weight": W4_G16}
    with pytest.raises(TypeError):  # keyword-only, as in coreai_opt
        ModuleKMeansPalettizerConfig.presets.w4(0, 16)
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
    assert config.module_name_configs == {"lm_head": ModuleKMeansPalettizerConfig.disabled()}
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
        lambda: KMeansPalettizerConfig(global_config=None, module_type_configs={nn.Linear: None}),
        lambda: KMeansPalettizerConfig(
            global_config=ModuleKMeansPalettizerConfig(
                enable_fast_kmeans_mode=False,
                rounding_precision=2,
                op_state_spec={"*": PalettizationSpec(cluster_dim=2, lut_qspec={"dtype": "int8"})},
                op_type_config={"linear": OpKMeansPalettizerConfig(op_state_spec=None)},
                op_name_config={r"fc\d": None},
                pat_schedule=PATSchedule(enable_fake_palettize=3),
            ),
            module_name_configs={
                r"layers\.\d+\.attn": ModuleKMeansPalettizerConfig.presets.w8(),
                "embed": ModuleKMeansPalettizerConfig(
                    module_state_spec={"weight": PalettizationSpec(n_bits=2)}
                ),
            },
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
    with pytest.raises(ValueError, match="expected dict"):
        KMeansPalettizerConfig.from_yaml(io.StringIO("- 1\n- 2\n"))
    # coreai_opt's errors: RuntimeError for a foreign or a missing root key
    with pytest.raises(RuntimeError, match="unexpected key 'quantization_config'"):
        KMeansPalettizerConfig.from_dict({"quantization_config": {}})
    with pytest.raises(RuntimeError, match="Did not find 'kmeans_palettization_config'"):
        KMeansPalettizerConfig.from_dict({"palettization_spec": {}})
    assert (
        KMeansPalettizerConfig.from_dict(
            {"kmeans_palettization_config": {}, "palettization_spec": None}
        )
        == KMeansPalettizerConfig()
    )


def test_fast_mode_rejects_vector_specs_in_op_state_spec():
    vector = PalettizationSpec(cluster_dim=2)
    with pytest.raises(ValidationError, match="cluster_dim=2 for state 'weight'"):
        ModuleKMeansPalettizerConfig(op_state_spec={"weight": vector})
    # coreai_opt checks op_state_spec only; elsewhere fast mode just does not apply to vectors
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


@pytest.mark.parametrize("cls", [KMeansPalettizerConfig, ModuleKMeansPalettizerConfig])
def test_config_classes_are_final(cls):
    with pytest.raises(TypeError, match="marked final"):
        type("Custom", (cls,), {})


def test_op_type_spellings():
    with pytest.warns(UserWarning, match="coreai_opt 0.3.0 matches only 'linear'"):
        config = ModuleKMeansPalettizerConfig(
            op_type_config={
                "aten.linear.default": None,
                "conv_transpose2d": None,
                "aten.conv2d.default": None,
                "multi_head_attention_forward": None,
            }
        )
    assert set(config.op_type_config) == {
        "linear",
        "conv_transpose2d",
        "conv2d",
        "multi_head_attention_forward",
    }
    # accepted, as by coreai_opt, but said to match nothing
    with pytest.warns(UserWarning, match="'matmul'.*matches no palettizable op"):
        ModuleKMeansPalettizerConfig(op_type_config={"matmul": None})
    with pytest.warns(UserWarning), pytest.raises(ValidationError, match="two keys name op type"):
        ModuleKMeansPalettizerConfig(op_type_config={"aten.linear.default": None, "linear": None})


def test_weight_only_configs_reject_activation_specs():
    spec = PalettizationSpec()
    for field in ("op_input_spec", "op_output_spec"):
        with pytest.raises(ValidationError, match=f"does not support {field}"):
            OpKMeansPalettizerConfig(**{field: {0: spec}})
    for field in ("module_input_spec", "module_output_spec"):
        with pytest.raises(ValidationError, match=f"does not support {field}"):
            ModuleKMeansPalettizerConfig(**{field: {"*": spec}})
    # what coreai_opt accepts: None, {} and disabled dicts; digit strings are indices
    config = ModuleKMeansPalettizerConfig(
        op_input_spec=None, op_output_spec={"0": None}, module_input_spec=None
    )
    assert config.op_input_spec == {"*": None} and config.op_output_spec == {0: None}
    assert config.module_input_spec == {}
    with pytest.raises(ValidationError, match="global_config cannot have module_input_spec"):
        KMeansPalettizerConfig(
            global_config=ModuleKMeansPalettizerConfig(module_state_spec={"weight": spec})
        )


def test_only_for_and_without():
    base = KMeansPalettizerConfig.presets.w4()
    w4 = base.global_config
    config = KMeansPalettizerConfig.presets.w4().only_for(nn.Linear, "lm_head")
    assert config.global_config == ModuleKMeansPalettizerConfig.disabled()
    assert config.module_type_configs == {"torch.nn.modules.linear.Linear": w4}
    assert config.module_name_configs == {"lm_head": w4}
    with pytest.raises(ValueError, match="only_for requires a non-disabled global_config"):
        config.only_for(nn.Conv2d)
    with pytest.raises(ValueError, match="at least one target"):
        KMeansPalettizerConfig().only_for()
    with pytest.raises(TypeError, match=r"nn\.Module subclasses or name strings"):
        KMeansPalettizerConfig().only_for(int)
    listed = KMeansPalettizerConfig.presets.w4().only_for([nn.Linear])
    assert list(listed.module_type_configs) == ["torch.nn.modules.linear.Linear"]
    without = KMeansPalettizerConfig.presets.w4().without([nn.LayerNorm, "lm_head"])
    assert without.global_config == w4
    assert without.module_name_configs == {"lm_head": ModuleKMeansPalettizerConfig.disabled()}
    assert KMeansPalettizerConfig().without() == KMeansPalettizerConfig()


def test_get_module_config_is_coreai_opts_single_module_lookup():
    a, b = (ModuleKMeansPalettizerConfig.presets.w8(), ModuleKMeansPalettizerConfig.presets.w4())
    config = KMeansPalettizerConfig(
        module_name_configs={"enc.*": a, "enc\\.0": b}, module_type_configs={nn.Linear: b}
    )
    assert config.get_module_config("enc.0", nn.Linear(2, 2)) == a  # first pattern, as coreai_opt
    assert config.get_module_config("head", nn.Linear(2, 2)) == b
    assert config.get_module_config("head", nn.Conv2d(2, 2, 1)) == config.global_config


def test_bad_regex_and_unknown_fields():
    with pytest.raises(ValidationError, match="op_name_config key '\\(' is not a valid regex"):
        ModuleKMeansPalettizerConfig(op_name_config={"(": None})
    with pytest.raises(ValidationError, match="module_name_configs"):
        KMeansPalettizerConfig(module_name_configs={"[": None})
    with pytest.raises(ValidationError, match="Extra inputs"):
        ModuleKMeansPalettizerConfig(op_state_specs={})
    with pytest.raises(ValidationError, match="op_input_spec"):
        ModuleKMeansPalettizerConfig(op_input_spec={"*": {"n_bits": 4}})


def test_setters_validate():
    config = KMeansPalettizerConfig()
    with pytest.raises(ValidationError):
        config.set_global({"op_state_spec": {"weight": {"n_bits": 5}}})
    config.set_module_type(torch.nn.Embedding, {"module_state_spec": {"weight": {"n_bits": 2}}})
    module = config.module_type_configs["torch.nn.modules.sparse.Embedding"]
    assert module.module_state_spec["weight"].n_bits == 2
    assert config.set_module_name(module_name="emb", config=None) is config  # coreai_opt names


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_configs_round_trip_through_dicts_and_yaml(seed):
    """Property: any config of the differential test's generator survives to_dict/from_dict
    and to_yaml/from_yaml unchanged, and what it writes is YAML-safe."""
    from tests.test_parity_resolution import random_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = KMeansPalettizerConfig.from_dict(random_config(seed))
    assert KMeansPalettizerConfig.from_dict(config.to_dict()) == config
    assert KMeansPalettizerConfig.from_yaml(io.StringIO(config.to_yaml())) == config
