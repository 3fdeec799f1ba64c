"""Real quantize / dequantize modules of `finalize(backend=ExportBackend.Torch)`.

Plain PyTorch arithmetic (exportable with `torch.export`, no custom ops), in float32 with one
cast at the end, the same arithmetic as the fused fake-quantize op, so finalized outputs equal
the prepared model's. Codes are stored in their storage dtype (int8 / uint8 for 8-, 4- and
2-bit integers, float8 for float8 and float4 values).

- `QuantizeTensor(x)` -> codes: zp: clamp(round(x / s) + zp, qmin, qmax); minval:
  clamp(round((x - minval) / s) + qmin, qmin, qmax); float: fp8(clamp(x / s, qmin, qmax))
  (float4 rounded with `fp4_forward` first).
- `DequantizeTensor(q)` -> (q - zp) * s, (q - qmin) * s + minval, or q * s.
- `QuantizedWeight()` -> the weight decoded from its stored codes (a parametrization in eager
  mode, a `call_module` node in graph mode).

Parameters are stored per block ([blocks per axis], the calculator's shape) and expanded at
run time: an axis of size 1 broadcasts, any other repeats each value over its block.
"""

from __future__ import annotations

import torch
from torch import nn

from coreai_opt_gpu.quantization.spec.fake_quantize import fp4_forward
from coreai_opt_gpu.quantization.spec.scheme import QuantizationFormulation


def _canonical(tensor: torch.Tensor) -> torch.Tensor:
    """float32 copy; one value -> 0-D (per tensor: broadcasts against any rank)."""
    tensor = tensor.detach().float().clone()
    return tensor.reshape(()) if tensor.numel() == 1 else tensor


class _Parameters(nn.Module):
    """Scale and offset buffers shared by the quantize and dequantize modules."""

    def __init__(
        self,
        scale: torch.Tensor,
        zero_point: torch.Tensor | None,
        minval: torch.Tensor | None,
        quant_min: float,
        quant_max: float,
        dtype: torch.dtype,
        formulation: QuantizationFormulation,
    ) -> None:
        super().__init__()
        offset = zero_point if formulation == QuantizationFormulation.ZP else minval
        self.register_buffer("scale", _canonical(scale))
        self.register_buffer("offset", None if offset is None else _canonical(offset))
        self.quant_min, self.quant_max = float(quant_min), float(quant_max)
        self.dtype = dtype
        self.formulation = QuantizationFormulation(formulation)

    def expanded(self, tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        """[blocks per axis] (or 0-D per tensor) -> broadcastable against `like`."""
        if tensor is None or tensor.dim() == 0:
            return tensor
        if tensor.dim() != like.dim():
            raise ValueError(
                f"quantization parameters of shape {tuple(tensor.shape)} do not fit a tensor "
                f"of shape {tuple(like.shape)}"
            )
        for axis in range(like.dim()):
            size = tensor.shape[axis]
            if size not in (1, like.shape[axis]):
                tensor = tensor.repeat_interleave(like.shape[axis] // size, dim=axis)
        return tensor

    def extra_repr(self) -> str:
        return (
            f"dtype={str(self.dtype).removeprefix('torch.')}, range=[{self.quant_min:g}, "
            f"{self.quant_max:g}], formulation={self.formulation}"
        )


class QuantizeTensor(_Parameters):
    """x -> its codes in `storage_dtype` (see the module docstring)."""

    def __init__(self, *args: object, storage_dtype: torch.dtype, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.storage_dtype = storage_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.float()
        s = self.expanded(self.scale, v)
        if self.dtype.is_floating_point:
            v = (v / s).clamp(self.quant_min, self.quant_max)
            if self.dtype == torch.float4_e2m1fn_x2:
                v = fp4_forward(v)
            return v.to(self.storage_dtype)
        offset = self.expanded(self.offset, v)
        if self.formulation == QuantizationFormulation.MINVAL:
            q = torch.round((v - offset) / s) + self.quant_min
        else:
            q = torch.round(v / s) + offset
        return q.clamp(self.quant_min, self.quant_max).to(self.storage_dtype)


class DequantizeTensor(_Parameters):
    """codes -> values in `output_dtype` (see the module docstring)."""

    def __init__(self, *args: object, output_dtype: torch.dtype, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.output_dtype = output_dtype

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        v = q.float()
        s = self.expanded(self.scale, v)
        if self.dtype.is_floating_point:
            return (v * s).to(self.output_dtype)
        offset = self.expanded(self.offset, v)
        if self.formulation == QuantizationFormulation.MINVAL:
            return ((v - self.quant_min) * s + offset).to(self.output_dtype)
        return ((v - offset) * s).to(self.output_dtype)


class QuantizedWeight(nn.Module):
    """A weight stored as codes (`codes` buffer, storage dtype) and decoded at each call;
    extra positional arguments (a parametrization's emptied original) are ignored."""

    def __init__(self, codes: torch.Tensor, dequantize: DequantizeTensor) -> None:
        super().__init__()
        self.register_buffer("codes", codes)
        self.dequantize = dequantize

    def forward(self, *unused: torch.Tensor) -> torch.Tensor:
        return self.dequantize(self.codes)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        """Parametrization hook: the stored original is an empty placeholder."""
        return value


__all__ = ["DequantizeTensor", "QuantizeTensor", "QuantizedWeight"]
