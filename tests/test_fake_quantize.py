"""Fused fake quantization kernel against its numpy twin (exact on the integer grid), and the
twin's float8 rounding against torch's own float8 casts."""

import numpy as np
import pytest
import torch

from coreai_opt_gpu import reference
from coreai_opt_gpu.kernels.fake_quantize import FakeQuantizeLaunch, fake_quantize
from coreai_opt_gpu.quantization.spec import QuantizationSpec

SPECS = {
    "int8-symmetric": QuantizationSpec(),
    "int8-clipping": QuantizationSpec(qscheme="symmetric_with_clipping"),
    "uint8-asymmetric": QuantizationSpec(dtype="uint8", qscheme="asymmetric"),
    "int4-symmetric": QuantizationSpec(dtype="int4"),
    "float8-e4m3": QuantizationSpec(dtype="float8_e4m3fn"),
    "float8-e5m2": QuantizationSpec(dtype="float8_e5m2"),
}


def parameters(x, spec, axis):
    """Min-max scale / zero point per tensor or per channel (test data, any valid values)."""
    dims = [d for d in range(x.dim()) if d != axis] if axis is not None else list(range(x.dim()))
    low = x.amin(dim=dims).clamp_max(0) if dims else x.clamp_max(0)
    high = x.amax(dim=dims).clamp_min(0) if dims else x.clamp_min(0)
    low, high = low.reshape(-1), high.reshape(-1)
    if spec.is_floating:
        scale = torch.maximum(-low, high) / spec.quant_max
        return scale.clamp_min(1e-12), torch.zeros_like(scale)
    if spec.qscheme.value == "asymmetric":
        scale = ((high - low) / (spec.quant_max - spec.quant_min)).clamp_min(1e-12)
        return scale, (spec.quant_min - torch.round(low / scale)).clamp(
            spec.quant_min, spec.quant_max
        )
    scale = (torch.maximum(-low, high) / ((spec.quant_max - spec.quant_min) / 2)).clamp_min(1e-12)
    zero = 0.0 if spec.quant_min < 0 else (spec.quant_min + spec.quant_max + 1) // 2
    return scale, torch.full_like(scale, zero)


def float8_name(spec):
    return str(spec.dtype).removeprefix("torch.") if spec.is_floating else None


@pytest.mark.parametrize("launch", [None, FakeQuantizeLaunch(16, 1)], ids=["auto", "16"])
@pytest.mark.parametrize(
    ("shape", "axis"),
    [((7, 33), None), ((6, 5, 3), 0), ((4, 9), 1), ((3, 4, 5), 2), ((0, 4), None)],
    ids=["per-tensor", "axis0", "axis1", "last-axis", "empty"],
)
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_kernel_matches_twin_exactly(spec, shape, axis, launch, device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 3
    if x.numel():
        x.view(-1)[0] = 0.5 * 3 / 127.5  # exercise ties
    scale, zero_point = parameters(x, spec, axis) if x.numel() else (torch.ones(1),) * 2
    expected = reference.fake_quantize(
        x.numpy(),
        scale.numpy(),
        zero_point.numpy(),
        axis,
        spec.quant_min,
        spec.quant_max,
        float8_name(spec),
    )
    out = torch.full(shape, float("nan"), device=device)
    got = fake_quantize(
        x.to(device),
        scale.to(device),
        zero_point.to(device),
        axis,
        spec.quant_min,
        spec.quant_max,
        float8_name(spec),
        launch,
        out,
    )
    assert np.array_equal(got.cpu().numpy(), expected)
    if x.numel() and not spec.is_floating:
        codes = expected / scale.numpy().reshape(
            [-1 if d == axis else 1 for d in range(x.dim())] if axis is not None else ()
        )
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)  # on the integer grid


@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e5m2"])
def test_twin_float8_rounding_matches_torch_casts(fmt):
    dtype = getattr(torch, fmt)
    x = torch.cat(
        [
            torch.randn(20000) * 10 ** torch.empty(20000).uniform_(-4, 2),
            torch.tensor([0.0, -0.0, 1.0625, 1.1875, 448.0, -57344.0]),
        ]
    )
    x = x[x.abs() <= torch.finfo(dtype).max]
    expected = x.to(dtype).float().numpy()
    assert np.array_equal(reference.round_to_float8(x.numpy(), fmt), expected)
