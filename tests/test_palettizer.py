"""KMeansPalettizer on real models: prepare, fake-palettized forward, state, precedence."""

import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu import reference
from coreai_opt_gpu.engine import cluster as engine_cluster
from coreai_opt_gpu.palettization import (
    KMeansPalettizer,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
)
from coreai_opt_gpu.palettization.parametrization import FakePalettize


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32, 16)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x)).mean((2, 3))
        return self.head(x)


class SmallTransformer(nn.Module):
    def __init__(self, vocab=64, dim=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.lm_head = nn.Linear(dim, vocab)

    def forward(self, tokens):
        x = self.embed(tokens)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.lm_head(x + self.mlp(x))


def build(cls, seed=0):
    torch.manual_seed(seed)
    return cls().eval()


def palettized_states(model):
    return {
        f"{name}.{state}": plist[0]
        for name, module in model.named_modules()
        if parametrize.is_parametrized(module)
        for state, plist in module.parametrizations.items()
    }


def blocks_distinct(fake: FakePalettize, weight: torch.Tensor) -> int:
    blocks = fake.layout.to_blocks(weight.detach())
    return max(len(torch.unique(b, dim=0)) for b in blocks)


W4 = KMeansPalettizerConfig.presets.w4(group_size=16)


@pytest.mark.parametrize(
    ("cls", "inputs", "expected"),
    [
        (SmallCNN, (torch.randn(2, 3, 8, 8),), {"conv1.weight", "conv2.weight", "head.weight"}),
        (
            SmallTransformer,
            (torch.randint(0, 64, (2, 10)),),
            {  # embeddings are reached only through module_state_spec, as in coreai_opt
                "attn.in_proj_weight",
                "attn.out_proj.weight",
                "mlp.0.weight",
                "mlp.2.weight",
                "lm_head.weight",
            },
        ),
    ],
    ids=["cnn", "transformer"],
)
def test_prepare_palettizes_every_targeted_weight(cls, inputs, expected):
    model = build(cls)
    with torch.no_grad():
        reference = model(*inputs)
    statistics = model.bn.running_mean.clone() if cls is SmallCNN else None
    prepared = KMeansPalettizer(model, W4).prepare(inputs)
    assert prepared is model
    states = palettized_states(model)
    assert set(states) == expected
    for name, fake in states.items():
        module_name, state = name.rsplit(".", 1)
        weight = getattr(model.get_submodule(module_name), state)
        assert blocks_distinct(fake, weight) <= 16
    with torch.no_grad():
        output = model(*inputs)
    assert float((output - reference).norm() / reference.norm()) < 0.15
    if statistics is not None:
        assert torch.equal(model.bn.running_mean, statistics)  # no forward pass in prepare


def test_train_mode_keeps_palettized_weights_frozen_by_default():
    """coreai_opt's default strategy: the palettized weight stays at its k-means value (no
    gradient reaches it) while the rest of the network trains."""
    model = build(SmallCNN)
    KMeansPalettizer(model, W4).prepare()
    model.train()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    original = model.conv2.parametrizations.weight.original
    assert original.grad is None
    assert model.conv2.bias.grad is not None and model.conv2.bias.grad.abs().sum() > 0
    with torch.no_grad():  # the forward value is the palettized weight, not the dense one
        decoded = model.conv2.parametrizations.weight[0].decode(original.dtype)
        assert torch.equal(model.conv2.weight, decoded)


def test_state_dict_restores_without_reclustering(monkeypatch):
    model = build(SmallTransformer, seed=0)
    KMeansPalettizer(model, W4).prepare()
    fresh = build(SmallTransformer, seed=1)
    KMeansPalettizer(fresh, W4).prepare()
    calls = []
    monkeypatch.setattr(
        engine_cluster,
        "cluster_scalar",
        lambda *a, **k: calls.append(a) or pytest.fail("re-clustered"),
    )
    fresh.load_state_dict(model.state_dict())
    for name in palettized_states(model):
        module_name, state = name.rsplit(".", 1)
        ours = getattr(model.get_submodule(module_name), state)
        theirs = getattr(fresh.get_submodule(module_name), state)
        assert torch.equal(ours, theirs), name
    assert not calls


def test_precedence_seen_on_the_model():
    config = (
        KMeansPalettizerConfig.presets.w4(group_size=16)
        .set_module_name(r"lm_head", None)
        .set_module_type(
            nn.Embedding,
            ModuleKMeansPalettizerConfig(module_state_spec={"weight": PalettizationSpec(n_bits=8)}),
        )
    )
    model = build(SmallTransformer)
    dense_head = model.lm_head.weight.detach().clone()
    KMeansPalettizer(model, config).prepare()
    states = palettized_states(model)
    assert "lm_head.weight" not in states and torch.equal(model.lm_head.weight, dense_head)
    assert states["embed.weight"].n_bits == 8 and states["mlp.0.weight"].n_bits == 4


def test_incompatible_weights_warn_and_stay_dense():
    model = build(SmallCNN)  # conv1 and head have 16 output channels: not divisible by 32
    with pytest.warns(UserWarning) as caught:
        KMeansPalettizer(model, KMeansPalettizerConfig.presets.w4(group_size=32)).prepare()
    messages = sorted(str(w.message) for w in caught if "left dense" in str(w.message))
    assert messages == [
        "conv1.weight left dense: weight of shape [16, 3, 3, 3]: axis 0 (16) is not divisible "
        "by group_size=32",
        "head.weight left dense: weight of shape [16, 32]: axis 0 (16) is not divisible by "
        "group_size=32",
    ]
    assert set(palettized_states(model)) == {"conv2.weight"}


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        KMeansPalettizer("not a model")
    model = build(SmallCNN)
    with pytest.raises(ValueError, match="num_workers must be an integer >= 1"):
        KMeansPalettizer(model).prepare(num_workers=0)
    KMeansPalettizer(model).prepare()
    with pytest.raises(RuntimeError, match="already prepared"):
        KMeansPalettizer(model).prepare()


def test_sensitivities_weight_the_clustering(tmp_path):
    """With near-zero sensitivity elsewhere, the LUT becomes the optimal one for the important
    weights alone (exact 1-D optimum as oracle), at the expense of the others."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32, bias=False))
    important = torch.zeros_like(model[0].weight, dtype=torch.bool)
    important[:, :8] = True  # the first 8 inputs matter, the rest barely; they are wider
    with torch.no_grad():
        model[0].weight[important] *= 4
    weight = model[0].weight.detach().clone()
    sensitivity = torch.where(important, 1.0, 1e-6)
    path = tmp_path / "sensitivities.safetensors"
    save_file({"0.weight": sensitivity}, str(path))
    config = KMeansPalettizerConfig(
        global_config=ModuleKMeansPalettizerConfig(
            op_state_spec={"weight": PalettizationSpec(n_bits=2)}, enable_fast_kmeans_mode=False
        )
    )
    KMeansPalettizer(model, config).prepare(sensitivity_path=path)
    plain_model = nn.Sequential(nn.Linear(64, 32, bias=False))
    plain_model[0].weight.data.copy_(weight)
    KMeansPalettizer(plain_model, config).prepare()
    errors = {
        name: (m[0].weight.detach() - weight) ** 2
        for name, m in (("weighted", model), ("plain", plain_model))
    }
    values = weight[important].double().sort().values[None]
    _, optimum = reference.kmeans_1d_exact(values.numpy(), torch.ones_like(values).numpy(), 4)
    assert float(errors["weighted"][important].sum()) <= 1.01 * float(optimum[0])
    assert errors["weighted"][important].sum() < errors["plain"][important].sum()
    assert errors["weighted"][~important].sum() > errors["plain"][~important].sum()
    save_file({"missing.weight": sensitivity}, str(path))
    with pytest.raises(ValueError, match=r"the model does not have: \['missing.weight'\]"):
        KMeansPalettizer(nn.Sequential(nn.Linear(64, 32)), config).prepare(sensitivity_path=path)


def test_sensitivity_files_in_both_formats(tmp_path):
    """coreai_opt writes torch.save files keyed "<module>.parametrizations.weight.original",
    with every parameter (biases too); ours are safetensors keyed "<module>.weight". Both
    load and give the same clustering; save_sensitivities writes either by suffix."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    sensitivity = {"0.weight": torch.rand(16, 32) ** 4, "2.weight": torch.rand(8, 16) ** 4}
    theirs, ours = tmp_path / "sens.pt", tmp_path / "sens.safetensors"
    torch.save(
        {
            "0.parametrizations.weight.original": sensitivity["0.weight"],
            "2.parametrizations.weight.original": sensitivity["2.weight"],
            "0.bias": torch.rand(16),
        },
        theirs,
    )
    save_file(sensitivity, str(ours))
    weights = {}
    for path in (theirs, ours):
        model = copy.deepcopy(dense)
        palettizer = KMeansPalettizer(model, KMeansPalettizerConfig())
        palettizer.prepare(sensitivity_path=path)
        weights[path.suffix] = (model[0].weight.clone(), model[2].weight.clone())
        palettizer.save_sensitivities(tmp_path / f"again{path.suffix}")
    assert all(torch.equal(a, b) for a, b in zip(*weights.values(), strict=True))
    plain = copy.deepcopy(dense)
    KMeansPalettizer(plain, KMeansPalettizerConfig()).prepare()
    assert not torch.equal(plain[0].weight, weights[".pt"][0])  # the weighting did something
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert set(again) == {
        "0.parametrizations.weight.original",
        "2.parametrizations.weight.original",
    }
    assert torch.equal(again["0.parametrizations.weight.original"], sensitivity["0.weight"])
    with pytest.raises(ValueError, match="No sensitivities"):
        unweighted = KMeansPalettizer(copy.deepcopy(dense))
        unweighted.prepare()
        unweighted.save_sensitivities(tmp_path / "none.pt")


@pytest.mark.parametrize(
    "granularity", [None, {"type": "per_grouped_channel", "axis": 0, "group_size": 4}]
)
def test_embedding_padding_row_decodes_to_exact_zero(granularity):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(16, 8, padding_idx=3))
    spec = PalettizationSpec(n_bits=2, **({"granularity": granularity} if granularity else {}))
    config = KMeansPalettizerConfig(
        global_config=ModuleKMeansPalettizerConfig(),
        module_type_configs={
            nn.Embedding: ModuleKMeansPalettizerConfig(module_state_spec={"weight": spec})
        },
    )
    KMeansPalettizer(model, config).prepare()
    weight = model[0].weight
    assert torch.equal(weight[3], torch.zeros(8))
    assert len(torch.unique(weight)) <= 4 * (4 if granularity else 1)


def test_decoded_weight_cache_follows_the_buffers():
    model = build(SmallTransformer, seed=0)
    KMeansPalettizer(model, W4).prepare()
    other = build(SmallTransformer, seed=1)
    KMeansPalettizer(other, W4).prepare()
    stale = other.mlp[0].weight.clone()  # decoded once and cached
    assert other.mlp[0].weight is other.mlp[0].weight  # the cache serves repeated access
    other.load_state_dict(model.state_dict())  # in-place copies into the buffers
    assert torch.equal(other.mlp[0].weight, model.mlp[0].weight)
    assert not torch.equal(other.mlp[0].weight, stale)


class FunctionalBlock(nn.Module):
    """Weights held as bare parameters and used through functional calls."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(32, 16) * 0.1)
        self.kernel = nn.Parameter(torch.randn(16, 4, 3) * 0.1)
        self.norm = nn.BatchNorm1d(16)
        self.unused = nn.Parameter(torch.randn(16, 16))

    def forward(self, x):  # x: [B, 4, L]
        y = self.norm(torch.nn.functional.conv1d(x, self.kernel, padding=1))
        return torch.nn.functional.linear(y.mean(-1), self.proj)


def test_functional_weights_are_found_with_example_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(FunctionalBlock(), nn.Linear(32, 16)).train()
    x = torch.randn(2, 4, 8)
    statistics = model[0].norm.running_mean.clone()
    config = KMeansPalettizerConfig(
        global_config=ModuleKMeansPalettizerConfig(op_state_spec={"*": PalettizationSpec(n_bits=2)})
    )
    KMeansPalettizer(model, config).prepare((x,))
    assert set(palettized_states(model)) == {"0.proj", "0.kernel", "1.weight", "1.bias"}
    assert len(torch.unique(model[0].proj)) <= 4 and len(torch.unique(model[0].kernel)) <= 4
    assert torch.equal(model[0].norm.running_mean, statistics)  # the trace moved nothing
    assert model.training and model[0].norm.training  # training flags restored
    untraced = nn.Sequential(FunctionalBlock(), nn.Linear(32, 16))
    KMeansPalettizer(untraced, config).prepare()  # no example inputs: module weights only
    assert set(palettized_states(untraced)) == {"1.weight", "1.bias"}


def test_config_entries_matching_no_module_warn():
    config = (
        KMeansPalettizerConfig.presets.w4()
        .set_module_name(r"mlp\.9", None)  # no such module
        .set_module_type(nn.Conv2d, None)
    )  # no convolution in the transformer
    with pytest.warns(UserWarning, match=r"match no module.*mlp.*9.*conv\.Conv2d"):
        KMeansPalettizer(build(SmallTransformer), config).prepare()
