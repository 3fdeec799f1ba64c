"""Finalize for Core AI: the custom layers of the optional coreai-torch package.

Each `FakePalettize` parametrization becomes coreai-torch's `PalettizeModule` (indices shaped
like the weight with axis 0 divided by cluster_dim, LUT of rank weight.dim() + 2, read by
`coreai::lut_to_dense`) or, with a per-channel scale and/or a quantized LUT,
`ScaledPalettizeModule` (an integer or float8 LUT, then `coreai::constexpr_blockwise_shift_scale`
with the per-block LUT scale, fused with the per-channel scale when both are present). The dense
original is replaced by an empty tensor, as in the plain-torch backend.

The layers are coreai-torch's classes with two additions (subclasses, so `isinstance` checks
and the converter see coreai-torch's layers): the decoded weight is cast to the dtype of the
(empty) original, so it follows `model.half()` / `.double()` like the dense weight would, and
the LUT and scales keep their dtype (float32, or the LUT's int8 / float8 codes) through such
casts (`precision.KeepsPrecision`).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from coreai_opt_gpu.palettization.finalize import CompressionReport, replace_fake_palettizations
from coreai_opt_gpu.palettization.parametrization import FakePalettize
from coreai_opt_gpu.palettization.precision import KeepsPrecision


def _following_the_weight_dtype(layer: type) -> type:
    """`layer` (a coreai-torch parametrization class) decoding to the original's dtype, its
    LUT and scales kept at their dtype through model casts."""

    class Layer(KeepsPrecision, layer):
        def forward(self, original: torch.Tensor) -> torch.Tensor:
            decoded = super().forward(original)
            return decoded.to(original.dtype) if original.is_floating_point() else decoded

    Layer.__name__ = Layer.__qualname__ = layer.__name__
    return Layer


@functools.cache
def coreai_layers() -> tuple[type, type]:
    """(PalettizeParametrization, ScaledPalettizeParametrization) from coreai-torch, as the
    module docstring describes."""
    try:
        from coreai_torch._compression.custom_layers import (
            PalettizeModule,
            ScaledPalettizeModule,
        )
        from coreai_torch._compression.utils import wrap_for_parametrization
    except ImportError as err:
        raise ValueError(
            "backend=CoreAI needs the optional coreai-torch package: "
            "pip install 'coreai-opt-gpu[coreai]'"
        ) from err
    return (
        _following_the_weight_dtype(wrap_for_parametrization(PalettizeModule)),
        _following_the_weight_dtype(wrap_for_parametrization(ScaledPalettizeModule)),
    )


def _at_weight_rank(per_block: torch.Tensor, fake: FakePalettize) -> torch.Tensor:
    """[G] per-block values -> [G0, G1, 1, ...] at the weight's rank."""
    layout = fake.layout
    rank = len(layout.shape)
    blocks = per_block.reshape(layout.blocks_axis0, layout.blocks_axis1)
    if rank == 1:
        return blocks[:, 0]
    return blocks.reshape(*blocks.shape, *([1] * (rank - 2)))


def coreai_parametrization(fake: FakePalettize, classes: tuple[type, type]) -> nn.Module:
    """The coreai-torch parametrization that decodes like `fake`."""
    palettize, scaled = classes
    layout = fake.layout
    rank = len(layout.shape)
    indices = fake.indices.reshape(layout.vectors, *layout.shape[1:])
    lut = layout.lut_view(fake.lut)  # [G0, G1, K, D]
    lut = (
        lut[:, 0] if rank == 1 else lut.reshape(*lut.shape[:2], *([1] * (rank - 2)), *lut.shape[2:])
    )
    vector_axis = 0 if layout.cluster_dim > 1 else None
    row_scale = fake.row_scale.reshape(-1, *([1] * (rank - 1))) if fake.row_scale.numel() else None
    if fake.lut_qspec is None:
        if row_scale is None:
            return palettize(indices=indices, lut=lut, vector_axis=vector_axis)
        return scaled(indices=indices, lut=lut, scale=row_scale, vector_axis=vector_axis)
    spec = fake.lut_qspec
    scale = _at_weight_rank(fake.lut_scale, fake)
    scale_at_lut = scale.reshape(*scale.shape, 1, 1)
    zero_point = None
    if spec.is_floating:
        codes = (lut / scale_at_lut).to(spec.dtype)
    else:
        zero_point = _at_weight_rank(fake.lut_zero_point, fake)
        codes = torch.round(lut / scale_at_lut + zero_point.reshape(*scale.shape, 1, 1))
        codes = codes.clamp(spec.quant_min, spec.quant_max).to(spec.dtype)
        zero_point = zero_point.to(spec.dtype)
    if row_scale is not None:  # fuse: per-block LUT scale, expanded to channels, x pcs
        repeat = layout.shape[0] // scale.shape[0]
        scale = scale.repeat_interleave(repeat, dim=0) * row_scale
        if zero_point is not None:
            zero_point = zero_point.repeat_interleave(repeat, dim=0)
    return scaled(
        indices=indices, lut=codes, scale=scale, zero_point=zero_point, vector_axis=vector_axis
    )


def finalize_coreai(model: nn.Module) -> CompressionReport:
    """Replace every FakePalettize parametrization by its coreai-torch counterpart."""
    classes = coreai_layers()
    return replace_fake_palettizations(
        model, lambda fake, dtype: coreai_parametrization(fake, classes)
    )
