"""Per-channel scale, LUT quantization and padding, through the palettization pipeline."""

import pytest
import torch
from torch import nn

from coreai_opt_gpu.engine.lut_quant import quantize_lut
from coreai_opt_gpu.palettization import (
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
)
from coreai_opt_gpu.palettization.palettize import palettize_targets, per_channel_scale
from coreai_opt_gpu.palettization.targets import find_targets
from coreai_opt_gpu.quantization import QuantizationSpec


def lut_blocks(seed=0):
    gen = torch.Generator().manual_seed(seed)
    lut = torch.randn(5, 16, 2, generator=gen).sort(dim=1).values
    lut[1] = lut[1].abs() + 0.1  # all positive
    lut[2] = 0.0  # all zero
    return lut


@pytest.mark.parametrize(
    ("dtype", "scheme"),
    [
        ("int8", "symmetric"),
        ("int8", "asymmetric"),
        ("uint8", "symmetric"),
        ("uint8", "asymmetric"),
        ("int8", "symmetric_with_clipping"),
    ],
)
def test_integer_lut_quantization_lands_on_the_grid(dtype, scheme):
    spec = QuantizationSpec(dtype=dtype, qscheme=scheme)
    lut = lut_blocks()
    result = quantize_lut(lut, spec)
    s, z = result.scale[:, None, None], result.zero_point[:, None, None]
    q = result.lut / s + z
    torch.testing.assert_close(q, q.round(), rtol=0, atol=1e-3)  # integer codes, exactly
    assert q.min() >= spec.quant_min - 1e-3 and q.max() <= spec.quant_max + 1e-3
    step = result.scale[:, None, None]
    assert ((result.lut - lut).abs() <= step * 1.0001).all()  # at most one step (clipping)
    assert torch.equal(result.lut[2], lut[2])  # an all-zero block stays zero
    if scheme == "symmetric" and dtype == "int8":
        magnitude = lut.flatten(1).abs().amax(1)
        expected = torch.where(magnitude > 0, magnitude / 127.5, torch.ones_like(magnitude))
        torch.testing.assert_close(result.scale, expected)  # torch's / upstream's convention


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
def test_fp8_lut_quantization_is_representable(dtype):
    spec = QuantizationSpec(dtype=dtype)
    lut = lut_blocks(1)
    result = quantize_lut(lut, spec)
    unscaled = result.lut / result.scale[:, None, None]
    fp8 = getattr(torch, dtype)
    torch.testing.assert_close(unscaled.to(fp8).float(), unscaled, rtol=1e-6, atol=0)
    assert torch.allclose(result.lut, lut, rtol=0.15, atol=1e-6)


def model_and_config(spec, module_cls=nn.Linear):
    torch.manual_seed(0)
    model = nn.Sequential(module_cls(32, 16), nn.ReLU(), nn.Linear(16, 8))
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-3, 0, 16)[:, None])  # rows of very different size
    module = ModuleKMeansPalettizerConfig(
        op_state_spec={"weight": spec}, enable_fast_kmeans_mode=spec.cluster_dim == 1
    )
    return model, KMeansPalettizerConfig(global_config=module)


def test_per_channel_scale_protects_small_rows():
    with_scale, without = (
        PalettizationSpec(n_bits=2, enable_per_channel_scale=flag) for flag in (True, False)
    )
    errors = {}
    for name, spec in (("scaled", with_scale), ("plain", without)):
        model, config = model_and_config(spec)
        weight = model[0].weight.detach()
        result = palettize_targets(find_targets(model, config))["0.weight"]
        decoded = result.dequantize()
        row_error = ((decoded - weight) ** 2).mean(1) / (weight**2).mean(1)
        errors[name] = row_error[:4].mean()  # the four smallest rows
        if name == "scaled":
            torch.testing.assert_close(result.row_scale, per_channel_scale(weight))
            normalized = result.layout.lut_view(result.lut)
            assert normalized.abs().max() <= 1.0 + 1e-6  # clustered on |w| / absmax <= 1
    assert errors["scaled"] < 0.1 * errors["plain"]


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_scaled_vectors_are_weighted_by_their_rows_squared_scales(kind, monkeypatch):
    """cluster_dim 2 under a per-channel scale: the engine gets each component's row scale
    squared as its weight (a vector spans two rows of different scale; divided by the
    block's largest, so the largest weight is 1), and the weight-space
    error comes out lower than clustering the scaled vectors unweighted, as coreai_opt does."""
    from coreai_opt_gpu.engine import cluster_blocks
    from coreai_opt_gpu.palettization import palettize

    spec = PalettizationSpec(n_bits=3, cluster_dim=2, enable_per_channel_scale=True)
    model, config = model_and_config(spec)
    if kind == "conv":
        model[0] = nn.Conv2d(4, 16, 3)
        with torch.no_grad():
            model[0].weight.mul_(torch.logspace(-3, 0, 16)[:, None, None, None])
    weight = model[0].weight.detach().clone()
    seen = {}

    def spy(blocks, n_bits, weights=None, **kwargs):
        seen[blocks.shape] = weights
        return cluster_blocks(blocks, n_bits, weights, **kwargs)

    monkeypatch.setattr(palettize, "cluster_blocks", spy)
    torch.manual_seed(1)
    result = palettize_targets(find_targets(model, config))["0.weight"]
    layout = result.layout
    rows = per_channel_scale(weight).reshape(-1, *[1] * (weight.dim() - 1)).expand_as(weight)
    scaled = layout.to_blocks(weight / rows)  # [G, N, D]
    squared = layout.to_blocks(rows).double().square()
    expected = (squared / squared.flatten(1).amax(1)[:, None, None]).float()
    torch.testing.assert_close(seen[scaled.shape], expected)
    error = float(((result.dequantize() - weight) ** 2).sum())
    torch.manual_seed(1)
    plain = cluster_blocks(scaled, 3)  # the scaled vectors, unweighted
    codes = layout.indices_from_blocks(plain.indices).long()  # [V, C, T]
    decoded = plain.lut[0][codes.reshape(-1)].reshape(*codes.shape, 2)  # [V, C, T, D]
    decoded = decoded.permute(0, 3, 1, 2).reshape(weight.shape) * rows
    assert error < 0.8 * float(((decoded - weight) ** 2).sum())


def test_scaled_vector_weights_neither_underflow_nor_overflow(monkeypatch):
    """Rows of 1e-24 (scale squared 1e-48: zero in float32) and of 1e18 (1e36 squared,
    times a sensitivity of 1e6: inf in float32) still give the engine finite, positive
    weights, each block's largest 1."""
    from coreai_opt_gpu.engine import cluster_blocks
    from coreai_opt_gpu.palettization import palettize

    spec = PalettizationSpec(n_bits=2, cluster_dim=2, enable_per_channel_scale=True)
    seen = []

    def spy(blocks, n_bits, weights=None, **kwargs):
        seen.append(weights)
        return cluster_blocks(blocks, n_bits, weights, **kwargs)

    monkeypatch.setattr(palettize, "cluster_blocks", spy)
    for factor, sensitivity in ((1e-24, None), (1e18, 1e6)):
        model, config = model_and_config(spec)
        with torch.no_grad():
            model[0].weight.mul_(factor)
        targets = find_targets(model, config)
        sensitivities = {}
        if sensitivity is not None:
            sensitivities = {t.qualified_name: torch.full_like(t.tensor, sensitivity)
                             for t in targets}  # fmt: skip
        seen.clear()
        result = palettize_targets(targets, sensitivities)["0.weight"]
        weights = seen[0]
        assert torch.isfinite(weights).all() and (weights > 0).all()
        assert torch.equal(weights.flatten(1).amax(1), torch.ones(len(weights)))
        assert torch.isfinite(result.dequantize()).all()


@pytest.mark.parametrize(
    "spec",
    [
        PalettizationSpec(n_bits=3, lut_qspec={"dtype": "int8"}, enable_per_channel_scale=True),
        PalettizationSpec(n_bits=2, cluster_dim=2, lut_qspec={"dtype": "float8_e4m3fn"}),
        PalettizationSpec(
            n_bits=4,
            granularity={"type": "per_grouped_channel", "axis": 1, "group_size": 8},
            lut_qspec={"dtype": "uint8", "qscheme": "asymmetric"},
        ),
    ],
    ids=["int8-scaled", "fp8-vector", "uint8-axis1"],
)
def test_pipeline_with_pre_and_post_steps(spec):
    model, config = model_and_config(spec)
    targets = find_targets(model, config)
    results = palettize_targets(targets)
    for target in targets:
        result = results[target.qualified_name]
        decoded = result.dequantize()
        assert decoded.shape == target.tensor.shape
        for lut in result.lut:  # every block: at most 2^n_bits distinct vectors
            assert len(torch.unique(lut, dim=0)) <= 2**spec.n_bits
        quantized = result.lut_quantization
        assert quantized is not None and torch.equal(quantized.lut, result.lut)
        rel = ((decoded - target.tensor) ** 2).sum() / (target.tensor**2).sum()
        assert rel < 2 ** (-spec.n_bits / spec.cluster_dim)  # well under the bit-rate scale
        assert result.packed_bytes() < target.tensor.numel() * 2


def test_bad_weights_name_the_layer():
    model, config = model_and_config(PalettizationSpec(n_bits=2))
    with torch.no_grad():
        model[2].weight[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"2\.weight: weight of shape \[8, 16\] contains NaN"):
        palettize_targets(find_targets(model, config))


def test_incompatible_layer_warns_and_stays_dense():
    model, _ = model_and_config(PalettizationSpec())
    config = KMeansPalettizerConfig.presets.w4(group_size=16)  # 8 rows of layer 2: not divisible
    with pytest.warns(UserWarning, match=r"2\.weight left dense: .*\[8, 16\].*group_size=16"):
        targets = find_targets(model, config)
    assert [t.qualified_name for t in targets] == ["0.weight"]
