"""The resolver: which spec each weight gets, by coreai_opt 0.3.0's rules (its documentation's
examples, written out here; tests/test_parity_resolution.py checks the same against the
installed reference on random configs)."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coreai_opt_gpu.config import ConfigLevel, SpecSite, resolve_spec
from coreai_opt_gpu.config.trace import static_ops, trace_ops
from coreai_opt_gpu.palettization import (
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    OpKMeansPalettizerConfig,
    PalettizationSpec,
    PATSchedule,
)
from coreai_opt_gpu.palettization.spec import PerGroupedChannelGranularity
from coreai_opt_gpu.palettization.targets import resolve_weights

S2, S3, S6, S8 = (PalettizationSpec(n_bits=b) for b in (2, 3, 6, 8))
DEFAULT = PalettizationSpec()


def states(**specs):
    return ModuleKMeansPalettizerConfig(op_state_spec=specs)


def config(**kwargs):
    kwargs.setdefault("global_config", ModuleKMeansPalettizerConfig())
    return KMeansPalettizerConfig(**kwargs)


class Block(nn.Module):
    """Calls F.linear twice on a bare parameter, and a Linear layer."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8))
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(F.linear(F.linear(x, self.w), self.w))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 8, padding_idx=0)
        self.encoder = nn.Sequential(
            nn.Sequential(nn.Linear(8, 8), nn.ReLU()),
            nn.Conv1d(8, 8, 1),
            nn.ConvTranspose1d(8, 8, 1),
        )
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.block = Block()
        self.lm_head = nn.Linear(8, 16)

    def forward(self, tokens):
        x = self.embed(tokens)
        x = self.encoder[0](x)
        x = self.encoder[2](self.encoder[1](x.transpose(1, 2))).transpose(1, 2)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.lm_head(self.block(x))


MODEL = Model()
TRACE = trace_ops(MODEL, (torch.randint(0, 16, (2, 3)),))


def resolved(cfg, model=MODEL, trace=TRACE):
    return {w.qualified_name: w.spec for w in resolve_weights(model, cfg, trace)}


MODULE_WEIGHTS = {
    "encoder.0.0.weight",
    "encoder.1.weight",
    "encoder.2.weight",
    "attn.in_proj_weight",
    "attn.out_proj.weight",
    "block.fc.weight",
    "lm_head.weight",
}


def test_default_config_palettizes_op_weights_but_not_embeddings():
    assert resolved(KMeansPalettizerConfig()) == dict.fromkeys(MODULE_WEIGHTS, DEFAULT)
    # static inference (no example inputs) finds the same module weights
    assert resolved(KMeansPalettizerConfig(), trace=static_ops(MODEL)) == resolved(
        KMeansPalettizerConfig()
    )


def test_embeddings_only_through_module_state_spec():
    everything = config(global_config=states(**{"*": S2}))
    assert "embed.weight" not in resolved(everything)  # op specs never reach it
    by_type = config(
        module_type_configs={
            nn.Embedding: ModuleKMeansPalettizerConfig(module_state_spec={"weight": S3})
        }
    )
    assert resolved(by_type)["embed.weight"] == S3


def test_module_name_config_applies_to_children():
    cfg = config(module_name_configs={"encoder": states(weight=S2)})
    specs = resolved(cfg)
    assert {n for n, s in specs.items() if s == S2} == {
        "encoder.0.0.weight",
        "encoder.1.weight",
        "encoder.2.weight",
    }


def test_later_name_pattern_wins_even_over_a_direct_match():
    later_direct = config(
        module_name_configs={"encoder": states(weight=S2), r"encoder\.1": states(weight=S3)}
    )
    assert resolved(later_direct)["encoder.1.weight"] == S3
    later_parent = config(
        module_name_configs={r"encoder\.1": states(weight=S3), "encoder": states(weight=S2)}
    )
    assert resolved(later_parent)["encoder.1.weight"] == S2  # the later key wins
    overlapping = config(
        module_name_configs={r"encoder\..*": states(weight=S3), r"encoder\.0.*": states(weight=S6)}
    )
    assert resolved(overlapping)["encoder.0.0.weight"] == S6
    assert resolved(overlapping)["encoder.1.weight"] == S3


def test_name_beats_type_beats_global_and_type_is_the_exact_class():
    cfg = config(
        global_config=states(weight=S2),
        module_type_configs={nn.Linear: states(weight=S3), nn.Sequential: states(weight=S6)},
        module_name_configs={"lm_head": states(weight=S8)},
    )
    specs = resolved(cfg)
    assert specs["lm_head.weight"] == S8
    assert specs["block.fc.weight"] == S3
    # the later type key (Sequential) reaches encoder.0.0 through its parents first
    assert specs["encoder.0.0.weight"] == S6
    # MultiheadAttention's out_proj (a Linear subclass) is not a Linear by exact type; its
    # weight goes with the attention op, whose module falls back to the global config
    assert specs["attn.out_proj.weight"] == S2


def test_op_names_are_module_path_dot_function():
    cfg = config(
        global_config=ModuleKMeansPalettizerConfig(
            op_state_spec={"*": S2},
            op_name_config={
                "lm_head.linear": None,
                r"block\.linear_1": OpKMeansPalettizerConfig(op_state_spec={"w": S8}),
                "lm_head": OpKMeansPalettizerConfig(op_state_spec={"*": S6}),  # matches no op
            },
        )
    )
    specs = resolved(cfg)
    assert "lm_head.weight" not in specs and "lm_head.bias" not in specs
    # block.w is used by two linear calls; the later call ("block.linear_1") decides
    assert specs["block.w"] == S8


def test_later_op_name_pattern_wins():
    cfg = config(
        global_config=ModuleKMeansPalettizerConfig(
            op_name_config={
                r".*\.linear": OpKMeansPalettizerConfig(op_state_spec={"weight": S2}),
                r"lm_.*": OpKMeansPalettizerConfig(op_state_spec={"weight": S3}),
            }
        )
    )
    specs = resolved(cfg)
    assert specs["lm_head.weight"] == S3 and specs["block.fc.weight"] == S2


def test_attention_is_the_op_multi_head_attention_forward():
    no_linear = config(global_config=ModuleKMeansPalettizerConfig(op_type_config={"linear": None}))
    specs = resolved(no_linear)
    assert {"attn.in_proj_weight", "attn.out_proj.weight"} <= set(specs)
    assert "lm_head.weight" not in specs
    no_attention = config(
        global_config=ModuleKMeansPalettizerConfig(
            op_type_config={"multi_head_attention_forward": None}
        )
    )
    assert not {"attn.in_proj_weight", "attn.out_proj.weight"} & set(resolved(no_attention))


def test_aten_spelling_works_with_a_warning():
    with pytest.warns(UserWarning, match="coreai_opt 0.3.0 matches only 'conv1d'"):
        cfg = config(
            global_config=ModuleKMeansPalettizerConfig(
                op_type_config={
                    "aten.conv1d.default": OpKMeansPalettizerConfig(op_state_spec={"weight": S8})
                }
            )
        )
    assert resolved(cfg)["encoder.1.weight"] == S8


def test_module_state_spec_beats_op_specs_and_is_not_inherited():
    cfg = config(
        module_name_configs={
            "block": ModuleKMeansPalettizerConfig(
                op_state_spec={"*": S2}, module_state_spec={"w": S8, "weight": S6}
            )
        }
    )
    specs = resolved(cfg)
    assert specs["block.w"] == S8
    assert specs["block.fc.weight"] == S2  # the child gets the op specs, not module_state_spec


def test_functional_parameters_resolve_by_their_attribute_names():
    assert "block.w" not in resolved(KMeansPalettizerConfig())  # keys: weight, in_proj_weight
    assert "block.w" in resolved(config(global_config=states(w=S2)))
    assert "block.w" not in resolved(config(global_config=states(w=S2)), trace=static_ops(MODEL))


def test_axis_none_resolves_to_the_op_default():
    grouped = PalettizationSpec(granularity=PerGroupedChannelGranularity(group_size=4))
    specs = resolved(config(global_config=states(weight=grouped)))
    assert specs["encoder.1.weight"].granularity.axis == 0
    assert specs["encoder.2.weight"].granularity.axis == 1  # transposed convolution


def test_fast_mode_and_schedule_come_from_the_deciding_configs():
    attn = ModuleKMeansPalettizerConfig(
        enable_fast_kmeans_mode=False, pat_schedule=PATSchedule(enable_fake_palettize=5)
    )
    weights = {
        w.qualified_name: w
        for w in resolve_weights(MODEL, config(module_name_configs={"attn": attn}), TRACE)
    }
    out_proj = weights["attn.out_proj.weight"]
    assert out_proj.module_config.enable_fast_kmeans_mode is False  # attn's config decided
    assert out_proj.pat_schedule == PATSchedule(enable_fake_palettize=5)  # inherited by out_proj
    assert weights["lm_head.weight"].pat_schedule is None


def test_modules_run_twice_are_resolved_once_and_aliases_match():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    trace = trace_ops(model, (torch.randn(1, 4),))
    assert [call.op_name for call in trace.calls] == ["0.linear"]
    cfg = config(module_name_configs={"2": states(weight=S2)})  # the alias of module 0
    assert resolved(cfg, model, trace) == {"0.weight": S2}


def test_build_module_config_dict_levels():
    w8 = ModuleKMeansPalettizerConfig.presets.w8()
    cfg = config(module_name_configs={"encoder": w8}, module_type_configs={nn.Linear: w8})
    levels = cfg.build_module_config_dict(MODEL)
    assert set(levels[ConfigLevel.MODULE_NAME]) == {
        "encoder",
        "encoder.0",
        "encoder.0.0",
        "encoder.0.1",
        "encoder.1",
        "encoder.2",
    }
    assert set(levels[ConfigLevel.MODULE_TYPE]) == {"block.fc", "lm_head"}
    assert "attn.out_proj" in levels[ConfigLevel.GLOBAL]


# --- single-site resolution (the Quantizer's entry point) ------------------------------------


def site(module_name="layers.0.fc", module_type=nn.Linear, op_type="linear", name="weight"):
    return SpecSite(module_name, module_type, op_type, module_name, name)


def test_single_site_resolution():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = KMeansPalettizerConfig(
            global_config=states(weight=S2),
            module_type_configs={nn.Linear: states(weight=S3)},
            module_name_configs={r"layers\.0": states(weight=S6), r"layers\.\d": states(weight=S8)},
        )
    assert resolve_spec(cfg, site()) == S8  # later pattern, matching an ancestor
    assert resolve_spec(cfg, site(module_name="head")) == S3
    subclass = nn.modules.linear.NonDynamicallyQuantizableLinear
    assert resolve_spec(cfg, site(module_name="head", module_type=subclass)) == S2  # exact type
    cfg.global_config = ModuleKMeansPalettizerConfig(op_state_spec={"*": S2, "bias": None})
    assert resolve_spec(cfg, site(module_name="x", module_type=nn.Conv2d, name="bias")) is None
    assert resolve_spec(cfg, site(module_name="x", module_type=nn.Conv2d, op_type="matmul")) == S2


def test_every_palettizable_op_is_an_interceptable_torch_function():
    """The op trace records palettizable ops without building the interceptable set (it costs
    ~20 ms on a process's first prepare); that is the same rule only while this holds."""
    from coreai_opt_gpu.config.trace import PALETTIZABLE_OPS, _interceptable

    assert PALETTIZABLE_OPS and set(PALETTIZABLE_OPS) <= _interceptable()
    for func in PALETTIZABLE_OPS:  # function_name's shortcut gives torch's own base name
        assert torch.overrides.resolve_name(func).rsplit(".", 1)[-1] == func.__name__
