"""Fake-quantize simulators that `QuantizationSpec.fake_quantize_cls` names ("default").

`FakeQuantizeImplBase` is the registry users subclass to plug in their own simulator
(`@FakeQuantizeImplBase.register("mine")`). The "default" one quantizes and dequantizes with
the parameters of its qparams calculator, gradients passing straight through. The Quantizer
itself runs `coreai_opt_gpu.quantization.fake_quantize.FakeQuantize` (fused kernel); this module
is the spec-level, pure-torch implementation that `QuantizationComponentFactory` builds.
"""

from __future__ import annotations

from typing import Any

import torch

from coreai_opt_gpu.config.spec import CompressionSimulatorBase, CompressionTargetTensor
from coreai_opt_gpu.quantization.spec.granularity import QuantizationGranularity
from coreai_opt_gpu.quantization.spec.scheme import QuantizationFormulation

# E2M1 magnitudes and the midpoints between neighbours
_FP4_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_FP4_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def fp4_forward(tensor: torch.Tensor) -> torch.Tensor:
    """Round to the nearest FP4 E2M1 value (0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives), in fp32.

    Ties go to the even encoding, magnitudes above 6 saturate to 6, NaN passes through.
    """
    x = tensor.float()
    magnitude = x.abs()
    mids = torch.tensor(_FP4_MIDPOINTS, device=x.device)
    code = torch.bucketize(magnitude, mids)  # a tie (== midpoint i) lands on code i
    tie = (code < len(_FP4_MIDPOINTS)) & (magnitude == mids[code.clamp(max=len(mids) - 1)])
    code = torch.where(tie & (code % 2 == 1), code + 1, code)
    rounded = torch.tensor(_FP4_GRID, device=x.device)[code] * torch.sign(x)
    rounded = torch.where(rounded == 0, torch.zeros_like(rounded), rounded)
    return torch.where(torch.isnan(x), x, rounded)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return quantized.view_as(quantized)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class FakeQuantizeImplBase(CompressionSimulatorBase):
    """Quantize-dequantize of one tensor with a qparams calculator's parameters."""

    def __init__(
        self,
        dtype: torch.dtype,
        qformulation: QuantizationFormulation,
        granularity: QuantizationGranularity,
        target_dtype: torch.dtype,
        quant_min: int | float,
        quant_max: int | float,
        qparams_calculator: Any,
        n_bits: int,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.dtype = dtype
        self.qformulation = QuantizationFormulation(qformulation)
        self.target_dtype = target_dtype
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.qparams_calculator = qparams_calculator
        self.n_bits = n_bits
        self.observer_enabled = True
        self._granularity = granularity

    @property
    def qscheme(self) -> Any:
        return self.qparams_calculator.qscheme

    @property
    def granularity(self) -> QuantizationGranularity:
        return self._granularity

    @property
    def quantization_target(self) -> CompressionTargetTensor:
        return self.qparams_calculator.quantization_target

    def enable_observer(self, enabled: bool = True) -> None:
        self.observer_enabled = enabled

    def disable_observer(self) -> None:
        self.observer_enabled = False

    def set_export_mode(self, enabled: bool = True) -> None:
        self.qparams_calculator.set_export_mode(enabled)

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        return self.qparams_calculator.get_qparams()

    def get_block_size(self, tensor_shape: torch.Size) -> tuple[int, ...]:
        return self.granularity.get_block_size(tensor_shape, self.quantization_target)

    def _expand(self, param: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Per-block parameters [blocks per axis] broadcast to the tensor's shape."""
        block = self.get_block_size(shape)
        param = param.reshape([s // b for s, b in zip(shape, block, strict=True)])
        for axis, size in enumerate(block):
            param = param.repeat_interleave(size, dim=axis)
        return param

    def quantize(
        self,
        tensor: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor | None,
        minval: torch.Tensor | None,
    ) -> torch.Tensor:
        """Codes of `tensor` (floats on the integer grid, or float8/fp4-rounded values)."""
        scale = self._expand(scale, tensor.shape)
        x = tensor.float() / scale
        if self.dtype.is_floating_point:
            if self.dtype == torch.float4_e2m1fn_x2:
                return fp4_forward(x)
            return x.clamp(self.quant_min, self.quant_max).to(self.dtype).float()
        if self.qformulation == QuantizationFormulation.MINVAL:
            offset = self._expand(minval, tensor.shape) / scale
            return (torch.round(x - offset) + self.quant_min).clamp(self.quant_min, self.quant_max)
        zero = self._expand(zero_point, tensor.shape).float()
        return (torch.round(x) + zero).clamp(self.quant_min, self.quant_max)

    def dequantize(
        self,
        tensor: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor | None,
        minval: torch.Tensor | None,
    ) -> torch.Tensor:
        """Values of codes produced by `quantize`."""
        scale = self._expand(scale, tensor.shape)
        if self.dtype.is_floating_point:
            return tensor * scale
        if self.qformulation == QuantizationFormulation.MINVAL:
            return (tensor - self.quant_min) * scale + self._expand(minval, tensor.shape)
        return (tensor - self._expand(zero_point, tensor.shape).float()) * scale

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled:
            scale, zero_point, minval = self.qparams_calculator(tensor.detach())
        else:
            scale, zero_point, minval = self.calculate_qparams()
        codes = self.quantize(tensor.detach(), scale, zero_point, minval)
        result = self.dequantize(codes, scale, zero_point, minval).to(tensor.dtype)
        return _StraightThrough.apply(tensor, result) if tensor.requires_grad else result


@FakeQuantizeImplBase.register("default")
class DefaultFakeQuantizeImpl(FakeQuantizeImplBase):
    """Quantize then dequantize, straight-through gradients (the spec's "default")."""


__all__ = ["DefaultFakeQuantizeImpl", "FakeQuantizeImplBase", "fp4_forward"]
