"""What finalize stores for one fake quantizer, shared by graph and eager mode (torchao-free).

- `finalize_qparams(fake, where)`: its (scale, zero_point, minval), the unused offset None,
  errors naming `where` for a dynamic calculator or one that never observed a tensor.
- `torch_qdq_pair(fake, where)`: the `QuantizeTensor` / `DequantizeTensor` of the Torch backend.
- `coreai_weight_tensors(fake, dense, where)`: the codes and parameters of coreai-torch's
  weight decode (`constexpr_blockwise_shift_scale` / `WeightDequantizeModule`).
- `coreai_activation_params(fake, axis, where)`: the scale and offsets of coreai-torch's
  activation quantize / dequantize, 0-D per tensor or 1-D along `axis`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from coreai_opt_gpu.quantization.qdq import DequantizeTensor, QuantizeTensor
from coreai_opt_gpu.quantization.spec.fake_quantize import FakeQuantizeImplBase
from coreai_opt_gpu.quantization.spec.scheme import QuantizationFormulation

FP4_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def finalize_qparams(fake: FakeQuantizeImplBase, where: str) -> tuple[Any, Any, Any]:
    """(scale, zero_point, minval) to store; the offset the formulation does not use is None."""
    if fake.is_stateless:
        raise NotImplementedError(
            f"{where} uses a dynamic qparams calculator (parameters recomputed at every "
            f"forward), which finalize cannot store; evaluate the prepared model instead"
        )
    try:
        scale, zero_point, minval = fake.calculate_qparams()
    except RuntimeError as err:
        raise RuntimeError(
            f"{where} never observed a tensor: run calibration_mode (or a forward) over it "
            f"before finalize"
        ) from err
    if fake.qformulation == QuantizationFormulation.ZP:
        return scale, zero_point, None
    return scale, None, minval


def torch_qdq_pair(
    fake: FakeQuantizeImplBase, where: str
) -> tuple[QuantizeTensor, DequantizeTensor]:
    scale, zero_point, minval = finalize_qparams(fake, where)
    args = (scale, zero_point, minval, fake.quant_min, fake.quant_max, fake.dtype)
    out_dtype = fake.export_dtype or torch.float32
    quantize = QuantizeTensor(*args, formulation=fake.qformulation, storage_dtype=fake.target_dtype)
    dequantize = DequantizeTensor(*args, formulation=fake.qformulation, output_dtype=out_dtype)
    return quantize, dequantize


def pack_fp4(values: torch.Tensor) -> torch.Tensor:
    """float4 (E2M1) values [..., 2n] -> coreai-torch's Float4Tensor (uint8 [..., n], low
    nibble first; code = grid index | sign << 3)."""
    from coreai_torch._compression._floatx import Float4Tensor

    grid = torch.tensor(FP4_GRID, device=values.device)
    magnitude = values.float().abs()
    codes = (magnitude.unsqueeze(-1) == grid).float().argmax(-1).to(torch.uint8)
    codes |= (torch.signbit(values.float()) & (magnitude > 0)).to(torch.uint8) << 3
    if codes.shape[-1] % 2:
        raise ValueError(f"float4 export needs an even last dimension, got {tuple(codes.shape)}")
    return Float4Tensor((codes[..., 1::2] << 4) | codes[..., 0::2])


@dataclass(frozen=True)
class CoreAIWeight:
    """The stored weight of coreai-torch's blockwise decode and its dtypes."""

    codes: Any
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    minval: torch.Tensor | None
    input_dtype: torch.dtype | None
    extra: dict[str, Any] = field(default_factory=dict)  # output_dtype with e8m0 scales


def coreai_weight_tensors(
    fake: FakeQuantizeImplBase, dense: torch.Tensor, where: str
) -> CoreAIWeight:
    scale, zero_point, minval = finalize_qparams(fake, where)
    out_dtype = fake.export_dtype or torch.float32
    codes = fake.quantize(dense, scale.float(), zero_point, minval)
    if fake.dtype == torch.float4_e2m1fn_x2:
        codes = pack_fp4(codes)
    scale = scale.to(out_dtype)
    extra: dict[str, Any] = {}
    if fake.qparams_calculator.scale_dtype == torch.float8_e8m0fnu:
        scale = scale.float().to(torch.float8_e8m0fnu)
        extra["output_dtype"] = out_dtype
    return CoreAIWeight(
        codes,
        scale,
        None if zero_point is None else zero_point.to(fake.target_dtype),
        None if minval is None else minval.to(out_dtype),
        None if fake.dtype.is_floating_point else fake.dtype,
        extra,
    )


def coreai_activation_params(
    fake: FakeQuantizeImplBase, axis: int | None, where: str
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(scale, zero_point, minval): 0-D when `axis` is None, else 1-D; e8m0 scales converted."""
    scale, zero_point, minval = finalize_qparams(fake, where)
    out_dtype = fake.export_dtype or torch.float32

    def canonical(tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        return tensor.reshape(()) if axis is None else tensor.reshape(-1)

    scale = canonical(scale.to(out_dtype))
    zero_point = canonical(None if zero_point is None else zero_point.to(fake.target_dtype))
    minval = canonical(None if minval is None else minval.to(out_dtype))
    if fake.qparams_calculator.scale_dtype == torch.float8_e8m0fnu:
        scale = scale.float().to(torch.float8_e8m0fnu)
    return scale, zero_point, minval
