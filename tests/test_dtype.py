"""Dtype changes before and after finalize: `.half()`, `.bfloat16()`, `.float()`, `.double()`,
`.to(dtype)` on prepared and finalized models (both backends), and prepare on models that are
not float32.

Tolerance: exact. The LUT and scales stay float32, and a decoded weight is computed in float32
and cast once, so after a cast it equals the float32 decoded weight cast to that dtype, and a
round trip through fp16 gives back the float32 decoded weight bit for bit (no loss at all,
where casting the weight itself loses up to half an fp16 ulp).
"""

import copy
import importlib.util

import pytest
import torch
from torch import nn

from coreai_opt_gpu import ExportBackend
from coreai_opt_gpu.palettization import (
    KMeansPalettizer,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
)

CASTS = {
    "half": (lambda m: m.half(), torch.float16),
    "bfloat16": (lambda m: m.bfloat16(), torch.bfloat16),
    "float": (lambda m: m.float(), torch.float32),
    "double": (lambda m: m.double(), torch.float64),
    "to-float16": (lambda m: m.to(torch.float16), torch.float16),
    "to-float64": (lambda m: m.to(dtype=torch.float64), torch.float64),
}
SCALED = KMeansPalettizerConfig(
    global_config=ModuleKMeansPalettizerConfig(
        op_state_spec={
            "weight": PalettizationSpec(
                n_bits=3,
                enable_per_channel_scale=True,
                granularity={"type": "per_grouped_channel", "axis": 0, "group_size": 8},
            )
        }
    )
)
BACKENDS = {
    "prepared": None,
    "torch": ExportBackend.Torch,
    "coreai": ExportBackend.CoreAI,
}


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8)).eval()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(32, 16)
        self.conv = nn.Conv1d(16, 8, 3, padding=1)

    def forward(self, x):  # x [B, 32]
        return self.conv(torch.relu(self.fc(x))[..., None].expand(-1, -1, 5))


def prepared(backend, config=SCALED):
    model = Net().eval()
    palettizer = KMeansPalettizer(model, config)
    palettizer.prepare((torch.randn(2, 32),))
    if backend is not None:
        if backend == ExportBackend.CoreAI and importlib.util.find_spec("coreai_torch") is None:
            pytest.skip("the optional coreai-torch package is not installed")
        palettizer.finalize(backend=backend)
    return model


@pytest.mark.parametrize("stage", BACKENDS.keys())
@pytest.mark.parametrize("cast", CASTS.keys())
def test_any_cast_works_and_decodes_the_float32_weight_cast_once(stage, cast):
    model = prepared(BACKENDS[stage])
    with torch.no_grad():
        expected = {n: m.weight.clone() for n, m in (("fc", model.fc), ("conv", model.conv))}
    apply, dtype = CASTS[cast]
    apply(model)
    x = torch.randn(2, 32)
    with torch.no_grad():
        out = model(x.to(dtype))
    assert out.dtype == dtype
    for name, weight in expected.items():
        decoded = getattr(model, name).weight
        assert decoded.dtype == dtype
        assert torch.equal(decoded, weight.to(dtype)), name
    for name, tensor in model.state_dict().items():  # the palettization kept float32
        if name.endswith(".lut") or name.endswith("scale"):  # row_scale, lut_scale, scale
            assert tensor.dtype in (torch.float32, torch.int8, torch.uint8), name


@pytest.mark.parametrize("stage", BACKENDS.keys())
def test_round_trip_through_fp16_loses_nothing(stage):
    model = prepared(BACKENDS[stage])
    with torch.no_grad():
        before = model.fc.weight.clone()
    model.half().float()
    with torch.no_grad():
        after = model.fc.weight
    cast_loss = (before - before.half().float()).abs()
    assert torch.equal(after, before)  # the bound asked for is |after - before| <= cast_loss
    assert cast_loss.max() > 0  # the bound is not vacuous on this weight


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "exact"])
def test_prepare_models_of_other_dtypes(dtype, fast):
    """Weights in fp16 / bf16 / fp64 cluster like their float32 values (fast mode rounds to
    fp16 anyway; exact mode clusters the float32 values); the decoded weight has the model's
    dtype."""
    config = KMeansPalettizerConfig(
        global_config=ModuleKMeansPalettizerConfig(
            op_state_spec={"weight": PalettizationSpec(n_bits=2)}, enable_fast_kmeans_mode=fast
        )
    )
    model = mlp().to(dtype)
    reference = copy.deepcopy(model).float()
    KMeansPalettizer(model, config).prepare()
    KMeansPalettizer(reference, config).prepare()
    assert model[0].weight.dtype == dtype
    assert len(torch.unique(model[0].weight)) <= 4
    assert torch.equal(model[0].weight, reference[0].weight.to(dtype))
    with torch.no_grad():
        assert model(torch.randn(3, 32, dtype=dtype)).dtype == dtype


@pytest.mark.parametrize("backend", [ExportBackend.Torch, ExportBackend.CoreAI])
def test_cast_between_prepare_and_finalize(backend):
    if backend == ExportBackend.CoreAI and importlib.util.find_spec("coreai_torch") is None:
        pytest.skip("the optional coreai-torch package is not installed")
    model = Net().eval()
    palettizer = KMeansPalettizer(model, SCALED)
    palettizer.prepare((torch.randn(2, 32),))
    model.bfloat16()
    with torch.no_grad():
        expected = model(torch.ones(1, 32, dtype=torch.bfloat16))
    palettizer.finalize(backend=backend)
    assert model.fc.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(model(torch.ones(1, 32, dtype=torch.bfloat16)), expected)
