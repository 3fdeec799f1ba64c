"""finalize(backend=ExportBackend.Torch): packed indices, memory freed, safetensors, export."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from coreai_opt_gpu import ExportBackend
from coreai_opt_gpu.palettization import (
    KMeansPalettizer,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
)
from coreai_opt_gpu.palettization.finalize import PackedPalettize
from tests.test_palettizer import SmallCNN, SmallTransformer, build

CASES = {
    "cnn-w4": (SmallCNN, lambda: torch.randn(2, 3, 8, 8), KMeansPalettizerConfig.presets.w4()),
    "transformer-w4": (
        SmallTransformer,
        lambda: torch.randint(0, 64, (2, 10)),
        KMeansPalettizerConfig.presets.w4(),
    ),
    "transformer-3bit-scaled-int8": (
        SmallTransformer,
        lambda: torch.randint(0, 64, (2, 10)),
        KMeansPalettizerConfig(
            global_config=ModuleKMeansPalettizerConfig(
                op_state_spec={
                    "*": PalettizationSpec(
                        n_bits=3, enable_per_channel_scale=True, lut_qspec={"dtype": "int8"}
                    )
                }
            )
        ),
    ),
    "cnn-6bit-vector": (
        SmallCNN,
        lambda: torch.randn(2, 3, 8, 8),
        KMeansPalettizerConfig(
            global_config=ModuleKMeansPalettizerConfig(
                op_state_spec={"weight": PalettizationSpec(n_bits=6, cluster_dim=2)},
                enable_fast_kmeans_mode=False,
            )
        ),
    ),
}


def finalized(cls, config, seed=0):
    model = build(cls, seed)
    palettizer = KMeansPalettizer(model, config)
    palettizer.prepare()
    return model, palettizer


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_finalize_keeps_outputs_and_frees_dense_weights(case):
    cls, make_input, config = case
    x = make_input()
    model, palettizer = finalized(cls, config)
    with torch.no_grad():
        prepared_output = model(x)
    dense_elements = sum(p.numel() for n, p in model.named_parameters() if "original" in n)
    assert palettizer.finalize(backend=ExportBackend.Torch) is model
    with torch.no_grad():
        assert torch.equal(model(x), prepared_output)  # same decoded weights, bit for bit
    originals = [p for n, p in model.named_parameters() if "original" in n]
    assert originals and all(p.numel() == 0 for p in originals)  # dense weights are gone
    packs = [m for m in model.modules() if isinstance(m, PackedPalettize)]
    report = palettizer.report
    assert report.weights == len(packs) == len(originals)
    assert report.elements == dense_elements
    assert report.compressed_bytes == sum(p.nbytes for p in packs)
    n_bits = packs[0].n_bits
    cluster_dim = packs[0].layout.cluster_dim
    assert n_bits / cluster_dim <= report.bits_per_weight < n_bits / cluster_dim + 8
    assert report.saved_bytes > 0


def test_safetensors_round_trip(tmp_path):
    cls, make_input, config = CASES["transformer-3bit-scaled-int8"]
    x = make_input()
    model, palettizer = finalized(cls, config)
    palettizer.finalize(backend=ExportBackend.Torch)
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    fresh, fresh_palettizer = finalized(cls, config, seed=1)
    fresh_palettizer.finalize(backend=ExportBackend.Torch)
    fresh.load_state_dict(load_file(str(path)))
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("case", ["cnn-w4", "transformer-w4"])
def test_finalized_model_exports(case):
    cls, make_input, config = CASES[case]
    x = make_input()
    model, palettizer = finalized(cls, config)
    palettizer.finalize(backend=ExportBackend.Torch)
    exported = torch.export.export(model, (x,))
    assert "coreai_opt_gpu.lut_dequant_packed" in str(exported.graph)
    assert torch.equal(exported.module()(x), model(x))


def test_finalize_errors():
    model = nn.Sequential(nn.Linear(16, 16))
    palettizer = KMeansPalettizer(model)
    with pytest.raises(RuntimeError, match="not prepared"):
        palettizer.finalize(backend=ExportBackend.Torch)
    palettizer.prepare()
    with pytest.raises(ValueError, match="mmap_dir"):
        palettizer.finalize(backend=ExportBackend.Torch, mmap_dir="/tmp")
    palettizer.finalize(backend="torch")
    with pytest.raises(RuntimeError, match="not prepared"):
        palettizer.finalize(backend=ExportBackend.Torch)
