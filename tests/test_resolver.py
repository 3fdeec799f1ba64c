"""The shared resolver: which spec applies to one tensor of one op of one module."""

import pytest
from torch import nn

from coreai_opt_gpu.config import SpecSite, resolve_spec
from coreai_opt_gpu.palettization import (
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    OpKMeansPalettizerConfig,
    PalettizationSpec,
)

S2, S3, S4, S6, S8 = (PalettizationSpec(n_bits=b) for b in (2, 3, 4, 6, 8))


def site(
    module_name="layers.0.fc",
    module_type=nn.Linear,
    op_type="linear",
    op_name=None,
    name="weight",
    kind="state",
):
    return SpecSite(module_name, module_type, op_type, op_name or module_name, name, kind)


def module(**kwargs):
    return ModuleKMeansPalettizerConfig(**kwargs)


def test_module_name_beats_type_beats_global():
    config = KMeansPalettizerConfig(
        global_config=module(op_state_spec={"weight": S2}),
        module_type_configs={nn.Linear: module(op_state_spec={"weight": S3})},
        module_name_configs={r"layers\.0\..*": module(op_state_spec={"weight": S4})},
    )
    assert resolve_spec(config, site()) == S4
    assert resolve_spec(config, site(module_name="layers.1.fc")) == S3
    assert (
        resolve_spec(config, site(module_name="conv", module_type=nn.Conv2d, op_type="conv2d"))
        == S2
    )


def test_name_patterns_fully_match_first_wins():
    config = KMeansPalettizerConfig(
        module_name_configs={
            r"layers\.0": module(op_state_spec={"weight": S4}),
            r"layers\.\d+\.fc": module(op_state_spec={"weight": S6}),
            r"layers\.0\.fc": module(op_state_spec={"weight": S8}),
        }
    )
    assert resolve_spec(config, site()) == S6  # 'layers\.0' does not fully match
    assert resolve_spec(config, site(module_name="head")) is None  # no global config


def test_none_disables_module():
    config = KMeansPalettizerConfig().set_module_name(r"layers\.0\.fc", None)
    assert resolve_spec(config, site()) is None
    assert resolve_spec(config, site(module_name="layers.1.fc")) == PalettizationSpec()
    config.set_module_type(nn.Linear, None)
    assert resolve_spec(config, site(module_name="layers.1.fc")) is None


def test_module_type_matches_base_classes():
    """MultiheadAttention.out_proj is a Linear subclass and follows Linear's config."""
    subclass = nn.modules.linear.NonDynamicallyQuantizableLinear
    config = KMeansPalettizerConfig(
        module_type_configs={nn.Linear: module(op_state_spec={"weight": S8})}
    )
    assert resolve_spec(config, site(module_type=subclass)) == S8


def test_precedence_inside_module():
    config = KMeansPalettizerConfig(
        global_config=module(
            op_state_spec={"weight": S2, "bias": S2},
            op_type_config={"linear": OpKMeansPalettizerConfig(op_state_spec={"weight": S3})},
            op_name_config={r".*\.fc": OpKMeansPalettizerConfig(op_state_spec={"weight": S4})},
            module_state_spec={"weight": S6},
        )
    )
    assert resolve_spec(config, site()) == S6  # module_state_spec first
    config.global_config.module_state_spec = {}
    assert resolve_spec(config, site()) == S4  # then op_name_config
    assert resolve_spec(config, site(name="bias")) is None  # the matched op config decides
    config.global_config.op_name_config = {}
    assert resolve_spec(config, site()) == S3  # then op_type_config
    assert resolve_spec(config, site(op_type="aten.linear.default")) == S3
    config.global_config.op_type_config = {}
    assert resolve_spec(config, site()) == S2  # then op_state_spec
    assert resolve_spec(config, site(name="bias")) == S2
    assert resolve_spec(config, site(name="in_proj_weight")) is None


def test_wildcard_and_none_values():
    config = KMeansPalettizerConfig(global_config=module(op_state_spec={"*": S8, "bias": None}))
    assert resolve_spec(config, site(name="anything")) == S8
    assert resolve_spec(config, site(name="bias")) is None
    config.global_config.op_state_spec = None
    assert resolve_spec(config, site()) is None
    config.global_config.op_state_spec = {"weight": S4}
    config.global_config.op_type_config = {"linear": None}
    assert resolve_spec(config, site()) is None
    config.global_config.op_type_config = {}
    config.global_config.op_name_config = {r".*fc": None}
    assert resolve_spec(config, site()) is None
    config.global_config.op_name_config = {}
    config.global_config.module_state_spec = {"weight": None}
    assert resolve_spec(config, site()) is None


def test_unknown_op_type_is_an_error():
    with pytest.raises(ValueError, match="known op types"):
        resolve_spec(KMeansPalettizerConfig(), site(op_type="matmul"))
