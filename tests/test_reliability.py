"""Palettizer reliability: no silent skips, clear errors, bounded caches.

Weights no palettizable op uses (one summary warning), prepares that palettize nothing, meta
weights, prepare after finalize (palettizes what is left, as coreai_opt does), invalid budgets,
the decoded-weight cache's budget, booleans as bit widths.
"""

import importlib.util
import warnings

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu import ExportBackend
from coreai_opt_gpu.palettization import (
    KMeansPalettizer,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
    decode_cache,
)
from coreai_opt_gpu.palettization.palettize import palettize_targets
from coreai_opt_gpu.palettization.targets import find_targets

requires_reference = pytest.mark.skipif(
    importlib.util.find_spec("coreai_opt") is None,
    reason="the reference coreai_opt 0.3.0 is not installed (pip install '.[bench]')",
)
EVERYTHING = KMeansPalettizerConfig(
    global_config=ModuleKMeansPalettizerConfig(op_state_spec={"*": PalettizationSpec(n_bits=2)})
)


class Bilinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.bilinear = nn.Bilinear(8, 8, 4)

    def forward(self, x):
        return self.bilinear(x, x)


class Matmuls(nn.Module):
    """Bare parameters used through @ and einsum, one unused, and one used by linear."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8))
        self.e = nn.Parameter(torch.randn(8, 8))
        self.unused = nn.Parameter(torch.randn(8, 8))
        self.proj = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        x = torch.einsum("bi,ij->bj", x @ self.w, self.e)
        return torch.nn.functional.linear(x, self.proj)


def palettized(model):
    return sorted(
        f"{name}.{state}" if name else state
        for name, module in model.named_modules()
        if parametrize.is_parametrized(module)
        for state in module.parametrizations
    )


def skipped_warnings(caught):
    return [str(w.message) for w in caught if "are left dense, because" in str(w.message)]


@pytest.mark.parametrize(
    ("model", "inputs", "config", "listed"),
    [
        (
            nn.Sequential(nn.LSTM(8, 8)),
            (torch.randn(3, 2, 8),),
            EVERYTHING,
            ["0.weight_ih_l0: LSTM runs its weights in one fused op", "0.weight_hh_l0: LSTM"],
        ),
        (
            nn.Sequential(nn.GRU(8, 8)),
            (torch.randn(3, 2, 8),),
            EVERYTHING,
            ["0.weight_ih_l0: GRU runs its weights in one fused op"],
        ),
        (Bilinear(), (torch.randn(2, 8),), KMeansPalettizerConfig(), ["bilinear.weight"]),
        (
            nn.Sequential(nn.EmbeddingBag(16, 8)),
            (torch.randint(0, 16, (2, 3)),),
            KMeansPalettizerConfig(),
            ["0.weight: used only by embedding_bag"],
        ),
        (
            Matmuls(),
            (torch.randn(2, 8),),
            EVERYTHING,
            [
                "<model>.w: used only by matmul",
                "<model>.e: used only by einsum",
                "<model>.unused: not used by the forward",
            ],
        ),
    ],
    ids=["lstm", "gru", "bilinear", "embedding-bag", "matmul-einsum"],
)
def test_weights_no_palettizable_op_uses_get_one_summary_warning(model, inputs, config, listed):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        KMeansPalettizer(model, config).prepare(inputs)
    summaries = skipped_warnings(caught)
    assert len(summaries) == 1, [str(w.message) for w in caught]
    for entry in listed:
        assert entry in summaries[0]
    assert "because no palettizable op uses them" in summaries[0]
    if isinstance(model, Matmuls):
        assert palettized(model) == ["proj"]  # the linear weight is palettized, not listed
        assert "proj" not in summaries[0]


def test_embeddings_and_static_custom_weights_are_explained():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 8))

        def forward(self, x):
            return torch.nn.functional.linear(x, self.weight)

    model = nn.Sequential(nn.Embedding(16, 8), Custom(), nn.Linear(8, 8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        KMeansPalettizer(model).prepare()  # no example inputs
    (summary,) = skipped_warnings(caught)
    assert "0.weight: used only by embedding" in summary
    assert "module_state_spec reaches it" in summary
    assert "1.weight: no example inputs, and Custom is not a standard layer" in summary
    assert "2.weight" not in summary and palettized(model) == ["2.weight"]
    traced = nn.Sequential(nn.Embedding(16, 8), Custom(), nn.Linear(8, 8))
    KMeansPalettizer(traced).prepare((torch.randint(0, 16, (2, 3)),))
    assert palettized(traced) == ["1.weight", "2.weight"]  # the forward finds the custom use


def test_a_prepare_that_palettizes_nothing_warns():
    with pytest.warns(UserWarning, match="prepare palettized no weight of this Sequential"):
        KMeansPalettizer(nn.Sequential(nn.ReLU(), nn.LayerNorm(8))).prepare((torch.randn(2, 8),))
    disabled = KMeansPalettizerConfig(global_config=None)
    with pytest.warns(UserWarning, match="palettized no weight"):
        KMeansPalettizer(nn.Sequential(nn.Linear(8, 8)), disabled).prepare()


def test_weights_on_the_meta_device_are_a_clear_error():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8))
    for inputs in ((), (torch.randn(1, 16, device="meta"),)):
        with pytest.raises(ValueError, match=r"meta device.*0\.weight \[16, 16\], 1\.weight"):
            KMeansPalettizer(model).prepare(inputs)
        assert palettized(model) == []


@pytest.mark.parametrize("backend", [ExportBackend.Torch, ExportBackend.CoreAI])
@pytest.mark.parametrize("with_inputs", [True, False], ids=["traced", "static"])
def test_prepare_after_finalize_palettizes_what_is_left(backend, with_inputs):
    """As coreai_opt: finalized weights are left as they are (and listed in the summary when
    the config addresses them), the others are palettized."""
    if backend == ExportBackend.CoreAI and importlib.util.find_spec("coreai_torch") is None:
        pytest.skip("the optional coreai-torch package is not installed")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    x = torch.randn(2, 16)
    first = KMeansPalettizerConfig().set_module_name("1", None)
    palettizer = KMeansPalettizer(model, first)
    palettizer.prepare((x,))
    palettizer.finalize(backend=backend)
    finalized = type(model[0].parametrizations.weight[0])
    with torch.no_grad():
        layer0 = model[0].weight.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        KMeansPalettizer(model).prepare((x,) if with_inputs else ())
    assert type(model[0].parametrizations.weight[0]) is finalized
    assert torch.equal(model[0].weight, layer0)
    assert palettized(model) == ["0.weight", "1.weight"]
    assert len(torch.unique(model[1].weight)) <= 16
    (summary,) = skipped_warnings(caught)
    assert f"0.weight: palettized already ({finalized.__name__}); left as it is" in summary
    with torch.no_grad():
        assert model(x).shape == (2, 16)


@requires_reference
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_prepare_after_finalize_palettizes_the_same_weights_as_the_reference():
    from coreai_opt.common import ExportBackend as RefBackend
    from coreai_opt.palettization import KMeansPalettizer as RefPalettizer
    from coreai_opt.palettization import KMeansPalettizerConfig as RefConfig

    first = KMeansPalettizerConfig().set_module_name("1", None)
    models = {}
    for package, (palettizer_class, config_class, backend) in {
        "ours": (KMeansPalettizer, KMeansPalettizerConfig, ExportBackend.CoreAI),
        "reference": (RefPalettizer, RefConfig, RefBackend.CoreAI),
    }.items():
        if importlib.util.find_spec("coreai_torch") is None:
            pytest.skip("the optional coreai-torch package is not installed")
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
        x = torch.randn(2, 16)
        palettizer = palettizer_class(model, config_class.from_dict(first.to_dict()))
        palettizer.prepare((x,))
        palettizer.finalize(backend=backend)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            palettizer_class(model, config_class()).prepare((x,))
        models[package] = model
    for model in models.values():
        assert palettized(model) == ["0.weight", "1.weight"]
        assert len(torch.unique(model[1].weight)) <= 16


@pytest.mark.parametrize("budget", [0, -5, True, 1.5, "2GiB"])
def test_invalid_memory_budgets_are_errors(budget):
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match="memory_budget must be a whole number of bytes >= 1"):
        KMeansPalettizer(model).prepare(memory_budget=budget)
    with pytest.raises(ValueError, match="memory_budget"):
        palettize_targets(find_targets(model, KMeansPalettizerConfig()), memory_budget=budget)
    assert palettized(model) == []


@pytest.fixture
def cache_budget():
    before = decode_cache.decode_cache_budget()
    yield decode_cache.set_decode_cache_budget
    decode_cache.set_decode_cache_budget(before)


def test_decoded_weight_cache_keeps_to_its_budget(cache_budget):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(64, 64, bias=False) for _ in range(4)]).eval()
    KMeansPalettizer(model).prepare()
    layer_bytes = 64 * 64 * 4
    cache_budget(2 * layer_bytes)  # two decoded layers
    decode_cache.clear_decode_cache()
    with torch.no_grad():
        model(torch.randn(1, 64))
    assert decode_cache.decode_cache_bytes() == 2 * layer_bytes
    fakes = [m.parametrizations.weight[0] for m in model]
    assert [f._decoded is not None for f in fakes] == [False, False, True, True]  # LRU
    assert model[3].weight is model[3].weight  # served from the cache
    model[0].weight  # noqa: B018 - decoded again, evicting the least recently used (layer 2)
    assert [f._decoded is not None for f in fakes] == [True, False, False, True]
    cache_budget(layer_bytes - 1)  # smaller than one layer: nothing is kept
    assert decode_cache.decode_cache_bytes() == 0
    first, second = model[1].weight, model[1].weight
    assert first is not second and torch.equal(first, second)
    cache_budget(0)
    assert model[2].weight is not model[2].weight
    assert decode_cache.decode_cache_bytes() == 0


def test_cached_weights_leave_with_their_model(cache_budget):
    import gc

    cache_budget(2**20)
    decode_cache.clear_decode_cache()
    model = nn.Sequential(nn.Linear(32, 32)).eval()
    KMeansPalettizer(model).prepare()
    model[0].weight  # noqa: B018 - decodes into the cache
    assert decode_cache.decode_cache_bytes() == 32 * 32 * 4
    del model
    gc.collect()
    assert decode_cache.decode_cache_bytes() == 0


def test_cached_weight_written_in_place_is_decoded_again(cache_budget):
    cache_budget(2**20)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32)).eval()
    KMeansPalettizer(model).prepare()
    x = torch.randn(2, 32)
    with torch.no_grad():
        expected = model(x)
        model[0].weight.mul_(0)  # writes the cached tensor itself
        assert torch.equal(model(x), expected)  # decoded again from the LUT and indices


def test_weight_decoded_under_inference_mode_still_serves_autograd(cache_budget):
    cache_budget(2**20)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32)).eval()
    palettizer = KMeansPalettizer(model)
    palettizer.prepare()
    x = torch.randn(2, 32)
    with torch.inference_mode():
        expected = model(x)
    x.requires_grad_(True)
    out = model(x)  # coreai_opt decodes afresh: this backward works there too
    out.sum().backward()
    assert x.grad is not None and torch.equal(out.detach(), expected)
    with palettizer.training_mode():
        model(x).sum().backward()


@pytest.mark.parametrize("budget", [-1, True, 2.5, "64MiB"])
def test_invalid_cache_budgets_are_errors(budget, cache_budget):
    with pytest.raises(ValueError, match="whole number of bytes >= 0"):
        cache_budget(budget)


@pytest.mark.parametrize(
    ("value", "budget"), [("1048576", 1048576), ("0", 0), (" ", decode_cache.DEFAULT_BUDGET)]
)
def test_cache_budget_from_the_environment(value, budget, monkeypatch):
    monkeypatch.setenv(decode_cache.BUDGET_ENV, value)
    assert decode_cache.DecodeCache().budget == budget  # read on first use


@pytest.mark.parametrize("value", ["-3", "64MiB", "1e6"])
def test_invalid_cache_budget_in_the_environment_is_an_error(value, monkeypatch):
    monkeypatch.setenv(decode_cache.BUDGET_ENV, value)
    with pytest.raises(ValueError, match=f"COREAI_OPT_GPU_DECODE_CACHE_BYTES='{value}'"):
        decode_cache.DecodeCache().budget  # noqa: B018


def test_booleans_are_not_bit_widths():
    with pytest.raises(ValidationError, match=r"n_bits must be 1, 2, 3, 4, 6 or 8, got True"):
        PalettizationSpec(n_bits=True)
    with pytest.raises(ValidationError, match=r"cluster_dim must be an integer >= 1, got True"):
        PalettizationSpec(cluster_dim=True)
    assert PalettizationSpec(n_bits=4.0).n_bits == 4  # a whole float still reads, as in both


@requires_reference
def test_the_reference_reads_n_bits_true_as_one_bit():
    """Why the rejection above is a documented deviation: coreai_opt 0.3.0 accepts it."""
    from coreai_opt.palettization.spec import PalettizationSpec as RefSpec

    assert RefSpec(n_bits=True).n_bits == 1


@pytest.mark.parametrize(
    "granularity",
    [
        {"type": "per_grouped_channel", "axis": 1, "group_size": 8},  # 4 blocks on the row
        {"type": "per_grouped_channel", "axis": 0, "group_size": 16},
        {"type": "per_tensor"},
    ],
    ids=["grouped-axis1", "grouped-axis0", "per-tensor"],
)
def test_padding_row_decodes_to_zero_in_every_block_it_touches(granularity):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(64, 32, padding_idx=5))
    spec = PalettizationSpec(n_bits=3, granularity=granularity)
    embedding = ModuleKMeansPalettizerConfig(module_state_spec={"weight": spec})
    config = KMeansPalettizerConfig().set_module_type(nn.Embedding, embedding)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        KMeansPalettizer(model, config).prepare()
    weight = model[0].weight
    assert not weight[5].any()
    assert weight[torch.arange(64) != 5].abs().sum(1).gt(0).all()  # the other rows are not
