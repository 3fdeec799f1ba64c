"""LUT fake quantization with one scale (and zero point) per palettization block.

Integer dtypes: q = clamp(round(c / scale) + zp, qmin, qmax), c' = (q - zp) * scale, with
torch's (and coreai_opt's) conventions: symmetric scale = max|c| / ((qmax - qmin) / 2) and zero
point 0 (signed) or (qmin + qmax + 1) / 2 (unsigned); asymmetric scale = (max(c, 0) -
min(c, 0)) / (qmax - qmin). Float8: scale = max|c| / finfo.max, c' = fp8(c / scale) * scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coreai_opt_gpu.quantization.spec import QuantizationScheme, QuantizationSpec


@dataclass(frozen=True)
class QuantizedLut:
    """Fake-quantized LUT [G, K, D] (float32) and its per-block scale [G], zero point [G]."""

    lut: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor


def quantize_lut(lut: torch.Tensor, spec: QuantizationSpec) -> QuantizedLut:
    """Fake-quantize every block's LUT [G, K, D] with its own parameters."""
    c = lut.float()
    flat = c.flatten(1)
    low = flat.amin(1).clamp_max(0.0)
    high = flat.amax(1).clamp_min(0.0)
    magnitude = torch.maximum(-low, high)
    if spec.is_floating:
        scale = magnitude / torch.finfo(spec.dtype).max
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = (c / scale[:, None, None]).to(spec.dtype).float()
        return QuantizedLut(q * scale[:, None, None], scale, torch.zeros_like(scale))
    qmin, qmax = spec.quant_min, spec.quant_max
    if spec.qscheme == QuantizationScheme.ASYMMETRIC:
        scale = (high - low) / (qmax - qmin)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = (qmin - torch.round(low / scale)).clamp(qmin, qmax)
    else:
        scale = magnitude / ((qmax - qmin) / 2)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.full_like(scale, 0.0 if qmin < 0 else (qmin + qmax + 1) // 2)
    s, z = scale[:, None, None], zero_point[:, None, None]
    q = (torch.round(c / s) + z).clamp(qmin, qmax)
    return QuantizedLut((q - z) * s, scale, zero_point)
