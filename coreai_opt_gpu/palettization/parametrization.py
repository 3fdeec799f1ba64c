"""Fake palettization of one weight: a `torch.nn.utils.parametrize` parametrization.

The weight is decoded from the stored LUT and indices (and per-channel scale) through the
LUT-gather dequant op: the Triton kernel on CUDA, its numpy twin elsewhere. In eval mode the
result depends only on those buffers; in training mode gradients reach the dense weight
straight through (forward value decoded, backward identity), so fine-tuning after prepare
works.
"""

from __future__ import annotations

import torch
from torch import nn

from coreai_opt_gpu.ops import lut_dequant
from coreai_opt_gpu.palettization.layout import PaletteLayout
from coreai_opt_gpu.palettization.palettize import PalettizedWeight

DECODE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _StraightThrough(torch.autograd.Function):
    """Forward: exactly the decoded weight. Backward: the gradient goes to the dense weight."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        return decoded.view_as(decoded)  # a new tensor: the cached one keeps no graph

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class FakePalettize(nn.Module):
    """Buffers: `lut` [G, K, D], `indices` [V, C, T] uint8, `row_scale` [O] (empty when the
    spec has no per-channel scale), `lut_scale` / `lut_zero_point` [G] (empty without a LUT
    quantization spec)."""

    def __init__(self, palettized: PalettizedWeight) -> None:
        super().__init__()
        self.layout: PaletteLayout = palettized.layout
        self.n_bits = palettized.spec.n_bits
        self.lut_qspec = palettized.spec.lut_qspec  # the LUT's storage dtype at export
        self.packed_bytes = palettized.packed_bytes()  # storage once indices are bit-packed
        self.straight_through = False  # set during calibration: gradients in eval mode too
        self._cached: tuple[tuple, torch.Tensor] | None = None  # (buffer versions, weight)
        for name, value in self._buffers_of(palettized).items():
            self.register_buffer(name, value)

    @staticmethod
    def _buffers_of(palettized: PalettizedWeight) -> dict[str, torch.Tensor]:
        empty = palettized.lut.new_empty(0)
        row_scale, quantized = palettized.row_scale, palettized.lut_quantization
        return {
            "lut": palettized.lut.float().contiguous(),
            "indices": palettized.indices.contiguous(),
            "row_scale": empty if row_scale is None else row_scale.float(),
            "lut_scale": empty if quantized is None else quantized.scale,
            "lut_zero_point": empty if quantized is None else quantized.zero_point,
        }

    def update(self, palettized: PalettizedWeight) -> None:
        """Replace the stored palettization (same weight, new clustering)."""
        self.packed_bytes = palettized.packed_bytes()
        for name, value in self._buffers_of(palettized).items():
            setattr(self, name, value.to(getattr(self, name).device))

    def _cache_key(self, dtype: torch.dtype) -> tuple:
        buffers = (self.lut, self.indices, self.row_scale)
        return (dtype, *((id(b), b._version, b.device) for b in buffers))

    def decode(self, dtype: torch.dtype) -> torch.Tensor:
        """The palettized weight in `dtype`, shaped like the original.

        It depends only on the stored LUT, indices and scales, so it is computed once and
        reused until one of them changes (a new tensor or an in-place write, e.g.
        load_state_dict); not cached while torch.compile / torch.export trace the model.
        """
        if torch.compiler.is_compiling():
            return self._decode(dtype)
        key = self._cache_key(dtype)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._decode(dtype))
        return self._cached[1]

    def _decode(self, dtype: torch.dtype) -> torch.Tensor:
        scale = self.row_scale if self.row_scale.numel() else None
        out_dtype = dtype if dtype in DECODE_DTYPES else torch.float32
        decoded = lut_dequant(self.indices, self.layout.lut_view(self.lut), scale, out_dtype)
        return decoded.reshape(self.layout.shape).to(dtype)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        decoded = self.decode(weight.dtype)
        if (self.training or self.straight_through) and weight.requires_grad:
            return _StraightThrough.apply(weight, decoded)
        return decoded

    def extra_repr(self) -> str:
        return f"n_bits={self.n_bits}, blocks={self.layout.num_blocks}, shape={self.layout.shape}"
