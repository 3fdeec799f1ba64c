"""Palettization storage keeps its precision when a model changes dtype.

`model.half()`, `.bfloat16()`, `.double()`, `.to(dtype)` cast every floating tensor of every
module. For the modules that hold a palettization (LUT, per-channel and LUT scales) that
would round the LUT and its scales separately, so a round trip through fp16 would lose more
than casting the weight itself does (fp16(lut) * fp16(scale) != fp16(lut * scale)), and float64
LUTs are not something the dequant kernels read. `KeepsPrecision` modules therefore follow
device moves but keep their floating tensors' dtypes; the decoded weight follows the dense
weight's dtype instead (it is computed in float32 and cast once).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class KeepsPrecision(nn.Module):
    """Mixin for parametrization modules: casts keep each floating tensor's dtype; moves to
    another device (and non-floating conversions) apply as usual."""

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
        def keep_precision(tensor: torch.Tensor) -> torch.Tensor:
            converted = fn(tensor)
            if tensor.is_floating_point() and converted.dtype != tensor.dtype:
                return tensor.to(converted.device)
            return converted

        return super()._apply(keep_precision, recurse)
