"""`fake_quantize` op: Triton kernel on CUDA tensors, numpy twin elsewhere."""

from __future__ import annotations

import torch

from coreai_opt_gpu import reference
from coreai_opt_gpu.backend import Backend, choose_backend


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int | None,
    quant_min: float,
    quant_max: float,
    float8: str | None = None,
) -> torch.Tensor:
    """Quantize-dequantize x with per-tensor ([1]) or per-channel ([x.shape[axis]]) scale and
    zero point (see `reference.fake_quantize`); the result has x's dtype and device."""
    if choose_backend(x) == Backend.TRITON:
        from coreai_opt_gpu.kernels.fake_quantize import fake_quantize as triton_fake_quantize

        return triton_fake_quantize(x, scale, zero_point, axis, quant_min, quant_max, float8)
    out = reference.fake_quantize(
        x.detach().float().cpu().numpy(), scale.detach().float().cpu().numpy(),
        zero_point.detach().float().cpu().numpy(), axis, quant_min, quant_max, float8,
    )  # fmt: skip
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)
