"""Observer + fake quantization of one tensor, driven by a QuantizationSpec."""

from __future__ import annotations

import torch
from torch import nn

from coreai_opt_gpu import ops
from coreai_opt_gpu.quantization.spec import (
    PerChannelGranularity,
    PerTensorGranularity,
    QuantizationScheme,
    QuantizationSpec,
)
from coreai_opt_gpu.quantization.spec.spec import dtype_name


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return quantized.view_as(quantized)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class FakeQuantize(nn.Module):
    """Tracks the range of the tensors it sees (while `observing`) with the spec's range and
    qparams calculators, and fake-quantizes them once a range exists; before that it passes
    tensors through. Buffers `low`, `high` hold the running range (per channel or [1])."""

    def __init__(self, spec: QuantizationSpec, default_axis: int = 0) -> None:
        super().__init__()
        granularity = spec.granularity
        if not isinstance(granularity, (PerTensorGranularity, PerChannelGranularity)):
            raise ValueError(
                f"quantization granularity {granularity.type!r} is not supported "
                f"yet; supported: per_tensor, per_channel"
            )
        self.spec = spec
        self.axis = (
            None
            if isinstance(granularity, PerTensorGranularity)
            else (granularity.axis if granularity.axis is not None else default_axis)
        )
        self.float8 = dtype_name(spec.dtype) if spec.is_floating else None
        self.observing = True
        self.register_buffer("low", torch.zeros(0))
        self.register_buffer("high", torch.zeros(0))

    @property
    def initialized(self) -> bool:
        return self.low.numel() > 0

    def observe(self, x: torch.Tensor) -> None:
        observed = self.spec.range_calculator_cls.compute(x.detach().float(), self.axis)
        observed = tuple(t.reshape(-1) for t in observed)
        running = (self.low, self.high) if self.initialized else None
        self.low, self.high = self.spec.qparam_calculator_cls.update(running, observed)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) from the running range, torch's conventions (as the LUT)."""
        spec = self.spec
        low, high = self.low.clamp_max(0.0), self.high.clamp_min(0.0)
        magnitude = torch.maximum(-low, high)
        if spec.is_floating:
            scale = magnitude / spec.quant_max
            return torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(scale)
        qmin, qmax = spec.quant_min, spec.quant_max
        if spec.qscheme == QuantizationScheme.ASYMMETRIC:
            scale = (high - low) / (qmax - qmin)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            return scale, (qmin - torch.round(low / scale)).clamp(qmin, qmax)
        scale = magnitude / ((qmax - qmin) / 2)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.full_like(scale, 0.0 if qmin < 0 else (qmin + qmax + 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
        if not self.initialized:
            return x
        scale, zero_point = self.qparams()
        quantized = ops.fake_quantize(
            x, scale, zero_point, self.axis, self.spec.quant_min, self.spec.quant_max, self.float8
        )
        if x.requires_grad:
            return _StraightThrough.apply(x, quantized)
        return quantized

    def extra_repr(self) -> str:
        return (
            f"dtype={dtype_name(self.spec.dtype)}, scheme={self.spec.qscheme.value}, "
            f"axis={self.axis}, observing={self.observing}"
        )
