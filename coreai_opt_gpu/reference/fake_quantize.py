"""numpy twin of `coreai_opt_gpu.kernels.fake_quantize`: quantize-dequantize in float32.

x is viewed as [outer, C, inner] with C = the size of the quantization axis (1 per-tensor).
Integer: q = clamp(rint(x / s) + z, qmin, qmax), y = (q - z) * s (rint: half to even).
Float8: y = fp8(x / s) * s, with fp8 rounding done in float32 arithmetic (round half to
even onto the format's grid, saturating at its largest value) so the kernel can match it
bit for bit on any backend.
"""

from __future__ import annotations

import numpy as np

# format -> (mantissa bits, smallest normal exponent, largest finite value)
FLOAT8_FORMATS = {"float8_e4m3fn": (3, -6, 448.0), "float8_e5m2": (2, -14, 57344.0)}


def round_to_float8(v: np.ndarray, fmt: str) -> np.ndarray:
    """float32 values -> nearest float8 value (half to even), saturated, as float32."""
    mantissa_bits, min_exponent, largest = FLOAT8_FORMATS[fmt]
    v = v.astype(np.float32)
    exponent = ((v.view(np.uint32) >> 23) & 0xFF).astype(np.int32) - 127
    step = np.exp2(np.maximum(exponent, min_exponent) - mantissa_bits).astype(np.float32)
    rounded = np.rint(v / step) * step
    return np.clip(rounded, -largest, largest).astype(np.float32)


def fake_quantize(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    axis: int | None,
    quant_min: float,
    quant_max: float,
    float8: str | None = None,
) -> np.ndarray:
    """Fake-quantize x (any shape) with per-tensor (axis None; scale, zero_point [1]) or
    per-channel ([x.shape[axis]]) parameters. Returns float32 shaped like x."""
    x32 = x.astype(np.float32)
    shape = [1] * x.ndim
    if axis is not None:
        shape[axis] = -1
    s = scale.astype(np.float32).reshape(shape if axis is not None else ())
    z = zero_point.astype(np.float32).reshape(shape if axis is not None else ())
    v = x32 / s
    if float8 is not None:
        return (round_to_float8(v, float8) * s).astype(np.float32)
    q = np.clip(np.rint(v) + z, quant_min, quant_max)
    return ((q - z) * s).astype(np.float32)
