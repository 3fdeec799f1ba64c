"""Fused fake quantization: quantize and dequantize in one pass, per-tensor or per-channel."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

FLOAT8_CODES = {None: 0, "float8_e4m3fn": 1, "float8_e5m2": 2}


@dataclass(frozen=True)
class FakeQuantizeLaunch:
    block: int
    num_warps: int


FAKE_QUANTIZE_LAUNCH = FakeQuantizeLaunch(1024, num_warps=4)


def fake_quantize_launch(n: int) -> FakeQuantizeLaunch:
    """Pure heuristic: 1024 elements per program (tiny tensors are masked; one compiled
    kernel per dtype and format)."""
    del n
    return FAKE_QUANTIZE_LAUNCH


@triton.jit
def _round_half_even(v):
    """rint for float32 |v| < 2^23, from floor (no libdevice: runs in the interpreter)."""
    low = tl.floor(v)
    frac = v - low
    odd = (low - 2.0 * tl.floor(low * 0.5)) != 0.0
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    return tl.where(up, low + 1.0, low)


@triton.jit
def _fake_quantize_kernel(
    x_ptr,  # [N] (x viewed as [outer, C, inner], flattened)
    scale_ptr,  # [C] float32
    zero_point_ptr,  # [C] float32
    out_ptr,  # [N]
    N,
    C,
    inner,
    quant_min,
    quant_max,
    FLOAT8: tl.constexpr,  # 0: integer grid; 1: float8_e4m3fn; 2: float8_e5m2
    BLOCK: tl.constexpr,
):
    """Integer: y = (clamp(rint(x/s) + z, qmin, qmax) - z) * s. Float8: y = fp8(x/s) * s with
    the fp8 rounding emulated in fp32 (half to even, saturating). fp32 math, one cast."""
    offset = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = offset < N
    channel = (offset // inner) % C
    x = tl.load(x_ptr + offset, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(scale_ptr + channel, mask=mask, other=1.0).to(tl.float32)
    z = tl.load(zero_point_ptr + channel, mask=mask, other=0.0).to(tl.float32)
    v = tl.math.div_rn(x, s)  # IEEE division, as the twin (Triton's `/` is approximate)
    if FLOAT8 == 0:
        q = tl.minimum(tl.maximum(_round_half_even(v) + z, quant_min), quant_max)
        y = (q - z) * s
    else:
        if FLOAT8 == 1:
            mantissa_bits, min_exponent, largest = 3, -6, 448.0
        else:
            mantissa_bits, min_exponent, largest = 2, -14, 57344.0
        exponent = ((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
        step = tl.exp2((tl.maximum(exponent, min_exponent) - mantissa_bits).to(tl.float32))
        q = _round_half_even(tl.math.div_rn(v, step)) * step
        y = tl.minimum(tl.maximum(q, -largest), largest) * s
    tl.store(out_ptr + offset, y.to(out_ptr.dtype.element_ty), mask=mask)


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int | None,
    quant_min: float,
    quant_max: float,
    float8: str | None = None,
    launch: FakeQuantizeLaunch | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `coreai_opt_gpu.reference.fake_quantize`; output in x's dtype."""
    x = x.contiguous()
    if out is None:
        out = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return out
    channels = 1 if axis is None else x.shape[axis]
    inner = n if axis is None else math.prod(x.shape[axis + 1 :])
    launch = launch or fake_quantize_launch(n)
    _fake_quantize_kernel[(triton.cdiv(n, launch.block),)](
        x, scale.to(torch.float32).contiguous(), zero_point.to(torch.float32).contiguous(),
        out, n, channels, inner, float(quant_min), float(quant_max),
        FLOAT8=FLOAT8_CODES[float8], BLOCK=launch.block, num_warps=launch.num_warps,
    )  # fmt: skip
    return out


def variants() -> list:
    """Every configuration `fake_quantize` can launch: format and input dtype."""
    from coreai_opt_gpu.kernels.variants import FLOAT_TYPES, Variant

    launch = FAKE_QUANTIZE_LAUNCH
    return [
        Variant(
            _fake_quantize_kernel,
            f"FLOAT8={fmt} x={dtype}",
            {"x_ptr": short, "scale_ptr": "fp32", "zero_point_ptr": "fp32", "out_ptr": short},
            {"FLOAT8": code, "BLOCK": launch.block},
            launch.num_warps,
            2 * {"fp32": 4, "fp16": 2, "bf16": 2}[short],
        )
        for fmt, code in FLOAT8_CODES.items()
        for dtype, short in FLOAT_TYPES.items()
    ]
