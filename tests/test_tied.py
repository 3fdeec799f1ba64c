"""Tied weights: one Parameter held by several modules (embedding + lm_head) is clustered once
and stays one tensor through prepare, state_dict, finalize (both backends) and safetensors.

Tolerance: exact everywhere (a shared tensor must decode bit for bit the same under every
name; the reference comparison is on which weights are palettized and with how many levels).
"""

import importlib.util

import pytest
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from coreai_opt_gpu import ExportBackend
from coreai_opt_gpu.palettization import (
    KMeansPalettizer,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
    PATSchedule,
)
from coreai_opt_gpu.palettization import palettizer as palettizer_module
from coreai_opt_gpu.palettization.finalize import PackedPalettize


class Tied(nn.Module):
    """A LLaMA-style head: lm_head.weight is the embedding's weight (padding row 0)."""

    def __init__(self, vocab=64, dim=32, padding_idx=None):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=padding_idx)
        self.mid = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, tokens):
        return self.lm_head(torch.relu(self.mid(self.embed(tokens))))


def tied(seed=0, **kwargs):
    torch.manual_seed(seed)
    return Tied(**kwargs).eval()


TOKENS = torch.randint(0, 64, (2, 7))
S2 = PalettizationSpec(n_bits=2)
W4 = KMeansPalettizerConfig.presets.w4(group_size=16)
EMBEDDING_2BIT = KMeansPalettizerConfig(
    global_config=ModuleKMeansPalettizerConfig(op_state_spec={"weight": S2}),
    module_type_configs={
        nn.Embedding: ModuleKMeansPalettizerConfig(module_state_spec={"weight": S2})
    },
)


def fake_of(module):
    return module.parametrizations.weight[0]


def counting_clusters(monkeypatch):
    calls = []
    original = palettizer_module._cluster

    def cluster(targets, *args, **kwargs):
        calls.extend(t.qualified_name for t in targets)
        return original(targets, *args, **kwargs)

    monkeypatch.setattr(palettizer_module, "_cluster", cluster)
    return calls


@pytest.mark.parametrize("config", [W4, EMBEDDING_2BIT], ids=["w4-via-lm_head", "both-2bit"])
def test_tied_weight_is_clustered_once_and_shared(config, monkeypatch):
    model = tied()
    calls = counting_clusters(monkeypatch)
    KMeansPalettizer(model, config).prepare((TOKENS,))
    assert calls.count("embed.weight") + calls.count("lm_head.weight") == 1
    assert fake_of(model.embed) is fake_of(model.lm_head)  # one parametrization, two names
    originals = [m.parametrizations.weight.original for m in (model.embed, model.lm_head)]
    assert originals[0] is originals[1]
    assert torch.equal(model.embed.weight, model.lm_head.weight)
    levels = 2 ** fake_of(model.embed).n_bits
    blocks = fake_of(model.embed).layout.to_blocks(model.embed.weight)
    assert max(len(torch.unique(b)) for b in blocks) <= levels
    # the optimizer sees the dense tensor once
    assert sum(p is originals[0] for p in model.parameters()) == 1


def test_state_dict_round_trip_keeps_the_tie():
    model = tied(0)
    KMeansPalettizer(model, EMBEDDING_2BIT).prepare((TOKENS,))
    fresh = tied(1)
    KMeansPalettizer(fresh, EMBEDDING_2BIT).prepare((TOKENS,))
    fresh.load_state_dict(model.state_dict())
    assert fake_of(fresh.embed) is fake_of(fresh.lm_head)
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    assert torch.equal(fresh.embed.weight, model.embed.weight)
    with torch.no_grad():
        assert torch.equal(fresh(TOKENS), model(TOKENS))


@pytest.mark.parametrize("backend", [ExportBackend.Torch, ExportBackend.CoreAI])
def test_finalize_keeps_the_tie(backend, tmp_path):
    if backend == ExportBackend.CoreAI and importlib.util.find_spec("coreai_torch") is None:
        pytest.skip("the optional coreai-torch package is not installed")
    model = tied()
    palettizer = KMeansPalettizer(model, EMBEDDING_2BIT)
    palettizer.prepare((TOKENS,))
    with torch.no_grad():
        prepared = model(TOKENS)
    palettizer.finalize(backend=backend)
    layers = [fake_of(m) for m in (model.embed, model.lm_head)]
    assert layers[0] is layers[1]
    originals = [m.parametrizations.weight.original for m in (model.embed, model.lm_head)]
    assert originals[0] is originals[1] and originals[0].numel() == 0
    weights = {id(layers[0]), id(fake_of(model.mid))}
    assert palettizer.report.weights == len(weights)  # the tied tensor counts once
    assert palettizer.report.elements == 64 * 32 + 32 * 32
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), prepared, rtol=0, atol=0)
    if backend == ExportBackend.Torch:
        assert isinstance(layers[0], PackedPalettize)
        # safetensors refuses shared tensors in save_file; save_model / load_model keep
        # one copy and restore both names
        path = tmp_path / "tied.safetensors"
        save_model(model, str(path))
        fresh = tied(1)
        fresh_palettizer = KMeansPalettizer(fresh, EMBEDDING_2BIT)
        fresh_palettizer.prepare((TOKENS,))
        fresh_palettizer.finalize(backend=backend)
        load_model(fresh, str(path))
        assert fake_of(fresh.embed) is fake_of(fresh.lm_head)
        with torch.no_grad():
            assert torch.equal(fresh(TOKENS), model(TOKENS))


@pytest.mark.parametrize(
    ("config", "owners"),
    [
        (  # embedding 2-bit through module_state_spec, lm_head 4-bit grouped through its op
            KMeansPalettizerConfig.presets.w4(group_size=16).set_module_type(
                nn.Embedding, ModuleKMeansPalettizerConfig(module_state_spec={"weight": S2})
            ),
            ("embed gives PalettizationSpec(n_bits=2", "lm_head gives PalettizationSpec(n_bits=4"),
        ),
        (  # lm_head excluded by name, the embedding palettized: one tensor cannot be both
            KMeansPalettizerConfig(
                global_config=ModuleKMeansPalettizerConfig(),
                module_name_configs={"lm_head": None},
                module_type_configs={
                    nn.Embedding: ModuleKMeansPalettizerConfig(module_state_spec={"weight": S2})
                },
            ),
            ("embed gives PalettizationSpec(n_bits=2", "lm_head gives None (left dense)"),
        ),
    ],
    ids=["different-bits", "one-left-dense"],
)
def test_owners_that_disagree_are_an_error_naming_each(config, owners):
    model = tied()
    with pytest.raises(ValueError, match=r"embed\.weight, lm_head\.weight are one tensor") as err:
        KMeansPalettizer(model, config).prepare((TOKENS,))
    for text in owners:
        assert text in str(err.value)
    assert "module_state_spec of its module_type_configs entry" in str(err.value)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())  # nothing done


def test_schedules_of_the_owners_must_agree():
    scheduled = ModuleKMeansPalettizerConfig(
        module_state_spec={"weight": S2}, pat_schedule=PATSchedule(enable_fake_palettize=3)
    )
    config = KMeansPalettizerConfig(
        global_config=ModuleKMeansPalettizerConfig(op_state_spec={"weight": S2}),
        module_type_configs={nn.Embedding: scheduled},
    )
    with pytest.raises(ValueError, match="enable_fake_palettize=3"):
        KMeansPalettizer(tied(), config).prepare((TOKENS,))
    agreed = KMeansPalettizerConfig(
        global_config=ModuleKMeansPalettizerConfig(
            op_state_spec={"weight": S2}, pat_schedule=PATSchedule(enable_fake_palettize=3)
        ),
        module_type_configs={nn.Embedding: scheduled},
    )
    model = tied()
    palettizer = KMeansPalettizer(model, agreed)
    palettizer.prepare((TOKENS,))
    with palettizer.training_mode():
        assert not fake_of(model.embed).fake_palett_enabled  # the agreed schedule applies
        for _ in range(3):
            palettizer.step()
        assert fake_of(model.lm_head).fake_palett_enabled


def test_padding_row_stays_zero_under_every_name():
    model = tied(padding_idx=5)
    KMeansPalettizer(model, EMBEDDING_2BIT).prepare((TOKENS,))
    assert torch.equal(model.embed.weight[5], torch.zeros(32))
    assert torch.equal(model.lm_head.weight[5], torch.zeros(32))


def test_sensitivities_of_a_tied_weight_under_either_name(tmp_path):
    from safetensors.torch import save_file

    sensitivity = torch.rand(64, 32) ** 4
    results = []
    for name in ("embed.weight", "lm_head.weight"):
        path = tmp_path / f"{name}.safetensors"
        save_file({name: sensitivity}, str(path))
        model = tied()
        KMeansPalettizer(model, EMBEDDING_2BIT).prepare((TOKENS,), sensitivity_path=path)
        results.append(model.embed.weight.clone())
    assert torch.equal(results[0], results[1])
    plain = tied()
    KMeansPalettizer(plain, EMBEDDING_2BIT).prepare((TOKENS,))
    assert not torch.equal(plain.embed.weight, results[0])  # the weighting did something
    both = tmp_path / "both.safetensors"
    save_file({"embed.weight": sensitivity, "lm_head.weight": sensitivity + 1}, str(both))
    with pytest.raises(ValueError, match="one \\(tied\\) tensor but their sensitivities differ"):
        KMeansPalettizer(tied(), EMBEDDING_2BIT).prepare((TOKENS,), sensitivity_path=both)


@pytest.mark.skipif(
    importlib.util.find_spec("coreai_opt") is None,
    reason="the reference coreai_opt 0.3.0 is not installed (pip install '.[bench]')",
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_reference_shares_the_tied_weight_too():
    """coreai_opt 0.3.0 also installs one fake-palettize module on both owners: same levels,
    same sharing, on the configs where the owners agree."""
    from coreai_opt.palettization import KMeansPalettizer as RefPalettizer
    from coreai_opt.palettization import KMeansPalettizerConfig as RefConfig

    reference = tied()
    RefPalettizer(reference, RefConfig.from_dict(EMBEDDING_2BIT.to_dict())).prepare((TOKENS,))
    ours = tied()
    KMeansPalettizer(ours, EMBEDDING_2BIT).prepare((TOKENS,))
    for model in (reference, ours):
        assert fake_of(model.embed) is fake_of(model.lm_head)
        assert len(torch.unique(model.lm_head.weight)) <= 4
        assert torch.equal(model.embed.weight, model.lm_head.weight)
