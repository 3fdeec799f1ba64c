"""Property-based tests (hypothesis) of the whole palettizer flow over configs, shapes, dtypes,
devices and tied weights: prepare, forward, state_dict round trip, finalize, dtype change,
safetensors. Derandomized, so CI runs the same examples every time.

Properties, each exact (bit for bit), since every step only stores or gathers:
- no tensor a spec does not address changes (the excluded module, biases, the embedding);
- a palettized weight has codes < 2^n_bits and decodes in the model's dtype;
- a state_dict loaded into a model prepared from other weights gives the same outputs;
- finalize (plain torch) gives the prepared model's outputs, and its safetensors file
  (`save_model`, which keeps a tied tensor once) loads back to the same outputs;
- after a dtype change the decoded weights are the float32 decoded ones cast once.
"""

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_model, save_model
from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu import ExportBackend
from coreai_opt_gpu.palettization import (
    KMeansPalettizer,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


class Net(nn.Module):
    """Embedding -> linear -> conv1d -> head; optionally the head tied to the embedding."""

    def __init__(self, vocab: int, dim: int, hidden: int, kernel: int, tied: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, hidden)
        self.conv = nn.Conv1d(hidden, dim, kernel, padding=kernel // 2)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc(self.embed(tokens)))  # [B, L, hidden]
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.head(x)


@st.composite
def cases(draw):
    n_bits = draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
    cluster_dim = draw(st.sampled_from([1, 1, 2]))
    granularity = draw(
        st.sampled_from(
            [
                None,
                {"type": "per_grouped_channel", "axis": 0, "group_size": 4},
                {"type": "per_grouped_channel", "axis": 1, "group_size": 4},
            ]
        )
    )
    spec = {"n_bits": n_bits, "cluster_dim": cluster_dim}
    if granularity is not None:
        spec["granularity"] = granularity
    if draw(st.booleans()):
        spec["enable_per_channel_scale"] = True
    lut = draw(st.sampled_from([None, None, "int8", "uint8", "float8_e4m3fn"]))
    if lut is not None:
        spec["lut_qspec"] = {"dtype": lut}
    return {
        "spec": spec,
        "fast": cluster_dim == 1 and draw(st.booleans()),
        "vocab": draw(st.sampled_from([8, 16, 24])),
        "dim": draw(st.sampled_from([4, 8, 12])),
        "hidden": draw(st.sampled_from([8, 16])),
        "kernel": draw(st.sampled_from([1, 3])),
        "tied": draw(st.booleans()),
        "palettize_embedding": draw(st.booleans()),
        "exclude_fc": draw(st.booleans()),
        "dtype": draw(st.sampled_from(DTYPES)),
        "device": draw(st.sampled_from(DEVICES)),
        "seed": draw(st.integers(0, 2**16)),
    }


def build(case, seed):
    torch.manual_seed(seed)
    model = Net(case["vocab"], case["dim"], case["hidden"], case["kernel"], case["tied"])
    return model.to(device=case["device"], dtype=case["dtype"]).eval()


def config_of(case):
    spec = PalettizationSpec.model_validate(case["spec"])
    module = ModuleKMeansPalettizerConfig(
        op_state_spec={"weight": spec}, enable_fast_kmeans_mode=case["fast"]
    )
    config = KMeansPalettizerConfig(global_config=module)
    if case["palettize_embedding"] or case["tied"]:  # a tied embedding must agree with head
        config = config.set_module_type(
            nn.Embedding,
            ModuleKMeansPalettizerConfig(
                module_state_spec={"weight": spec}, enable_fast_kmeans_mode=case["fast"]
            ),
        )
    if case["exclude_fc"]:
        config = config.set_module_name("fc", None)
    return config


def prepared(case, seed):
    model = build(case, seed)
    palettizer = KMeansPalettizer(model, config_of(case))
    tokens = torch.randint(0, case["vocab"], (2, 5), device=case["device"])
    palettizer.prepare((tokens,))
    return model, palettizer, tokens


def palettized_names(model):
    return {
        f"{name}.{state}"
        for name, module in model.named_modules()
        if parametrize.is_parametrized(module)
        for state in module.parametrizations
    }


def run(model, tokens):
    with torch.no_grad():
        return model(tokens)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(cases())
@pytest.mark.filterwarnings("ignore::UserWarning")  # incompatible shapes and skipped weights
def test_the_palettizer_flow_keeps_its_promises(tmp_path_factory, case):
    dense = build(case, case["seed"])
    model, palettizer, tokens = prepared(case, case["seed"])
    names = palettized_names(model)
    k = 2 ** case["spec"]["n_bits"]

    # nothing a spec does not address changes; palettized weights have K levels per block
    for name, tensor in dense.state_dict().items():
        module_name, state = name.rsplit(".", 1)
        if f"{module_name}.{state}" in names:
            fake = model.get_submodule(module_name).parametrizations[state][0]
            assert int(fake.indices.max()) < k and fake.lut.shape[1] == k
            assert fake.lut.dtype == torch.float32
            assert getattr(model.get_submodule(module_name), state).dtype == case["dtype"]
        else:
            assert torch.equal(model.state_dict()[name], tensor), name
    if case["exclude_fc"]:
        assert "fc.weight" not in names
    assert not any(n.endswith("bias") for n in names)
    if case["tied"] and "head.weight" in names:
        assert model.head.parametrizations.weight[0] is model.embed.parametrizations.weight[0]

    # forward, and a state_dict round trip into a model prepared from other weights
    output = run(model, tokens)
    assert output.dtype == case["dtype"]
    other, _, _ = prepared(case, case["seed"] + 1)
    other.load_state_dict(model.state_dict())
    assert torch.equal(run(other, tokens), output)

    # finalize: same outputs; safetensors round trip; dtype change after finalize
    palettizer.finalize(backend=ExportBackend.Torch)
    assert torch.equal(run(model, tokens), output)
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    save_model(model, str(path))
    fresh, fresh_palettizer, _ = prepared(case, case["seed"] + 2)
    fresh_palettizer.finalize(backend=ExportBackend.Torch)
    load_model(fresh, str(path))
    assert torch.equal(run(fresh, tokens), output)
    target = torch.float16 if case["dtype"] != torch.float16 else torch.float64
    layers = {n: model.get_submodule(n.rsplit(".", 1)[0]).parametrizations.weight for n in names}
    in_float32 = {n: chain[0](torch.empty(0)) for n, chain in layers.items()}
    copy.deepcopy(model)  # copies work (and do not share a cached decode)
    model.to(target)
    for name, weight in in_float32.items():
        decoded = model.get_submodule(name.rsplit(".", 1)[0]).weight
        assert decoded.dtype == target and torch.equal(decoded, weight.to(target)), name
    assert run(model, tokens).dtype == target
