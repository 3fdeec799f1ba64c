"""finalize(backend=ExportBackend.CoreAI): coreai-torch's palettization layers.

Skipped without the optional coreai-torch package. Tolerance: exact for plain LUT gathers;
the scaled layers fuse the per-block LUT scale with the per-channel scale in another order,
so they match to float rounding.
"""

import pytest
import torch

from coreai_opt_gpu import ExportBackend
from coreai_opt_gpu.palettization import (
    KMeansPalettizer,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
)
from tests.test_palettizer import SmallCNN, SmallTransformer, build

layers = pytest.importorskip("coreai_torch._compression.custom_layers")


def config_of(spec, fast=True):
    return KMeansPalettizerConfig(
        global_config=ModuleKMeansPalettizerConfig(
            op_state_spec={"weight": spec, "in_proj_weight": spec}, enable_fast_kmeans_mode=fast
        )
    )


CASES = {
    "plain-w4": (KMeansPalettizerConfig.presets.w4(), layers.PalettizeModule, True),
    "per-channel-scale": (
        config_of(PalettizationSpec(n_bits=3, enable_per_channel_scale=True)),
        layers.ScaledPalettizeModule,
        False,
    ),
    "int8-lut-and-scale": (
        config_of(
            PalettizationSpec(
                n_bits=4,
                enable_per_channel_scale=True,
                lut_qspec={"dtype": "int8"},
                granularity={"type": "per_grouped_channel", "axis": 0, "group_size": 16},
            )
        ),
        layers.ScaledPalettizeModule,
        False,
    ),
    "fp8-lut-vector": (
        config_of(
            PalettizationSpec(n_bits=2, cluster_dim=2, lut_qspec={"dtype": "float8_e4m3fn"}),
            fast=False,
        ),
        layers.ScaledPalettizeModule,
        False,
    ),
}


@pytest.mark.parametrize("cls", [SmallCNN, SmallTransformer], ids=["cnn", "transformer"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_coreai_layers_decode_like_the_prepared_model(case, cls):
    config, layer_class, exact = case
    x = torch.randn(2, 3, 8, 8) if cls is SmallCNN else torch.randint(0, 64, (2, 10))
    model = build(cls)
    palettizer = KMeansPalettizer(model, config)
    palettizer.prepare()
    with torch.no_grad():
        expected = model(x)
    assert palettizer.finalize(backend=ExportBackend.CoreAI) is model
    replaced = [m for m in model.modules() if isinstance(m, layer_class)]
    assert replaced and len(replaced) == palettizer.report.weights
    assert all(p.numel() == 0 for n, p in model.named_parameters() if "original" in n)
    with torch.no_grad():
        output = model(x)
    if exact:
        assert torch.equal(output, expected)
    else:
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)
    assert palettizer.report.saved_bytes > 0


def test_coreml_backend_is_a_clear_error():
    palettizer = KMeansPalettizer(build(SmallCNN))
    palettizer.prepare()
    with pytest.raises(ValueError, match="backend=CoreML is not available yet"):
        palettizer.finalize(backend=ExportBackend.CoreML)
