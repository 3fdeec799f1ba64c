"""Finalize for plain PyTorch: bit-packed indices replace the dense weights.

Each `FakePalettize` parametrization becomes a `PackedPalettize`: indices packed at n_bits
(`reference.packing`), the LUT and scales as buffers, and the dense original replaced by an
empty tensor, so the memory is really freed. `module.weight` is decoded on every access by the
packed LUT-gather dequant op, which is a torch.library op: finalized models go through
`torch.export`, and their state_dict saves with safetensors. The decoded weight takes the
dtype of the (empty) original, so it follows `model.half()` and friends, while the LUT and
scales keep float32 (`precision.KeepsPrecision`). A FakePalettize shared by several modules
(tied weights) becomes one PackedPalettize and one empty original shared by all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu import reference
from coreai_opt_gpu.palettization.decoding import decode_weight
from coreai_opt_gpu.palettization.parametrization import FakePalettize
from coreai_opt_gpu.palettization.precision import KeepsPrecision


class PackedPalettize(KeepsPrecision):
    """Buffers: `packed` [V, ceil(C*T*n_bits/8)] uint8, `lut` [G, K, D] float32, `row_scale`,
    `lut_scale`, `lut_zero_point` (empty when unused). Decodes to the dtype of the original
    it is given (`dtype`: the weight's dtype at finalize)."""

    def __init__(self, fake: FakePalettize, dtype: torch.dtype) -> None:
        super().__init__()
        self.layout = fake.layout
        self.n_bits = fake.n_bits
        self.dtype = dtype
        v = self.layout.vectors
        codes = fake.indices.reshape(v, -1).cpu().numpy()
        packed = torch.from_numpy(reference.pack_indices(codes, self.n_bits))
        self.register_buffer("packed", packed.to(fake.indices.device))
        for name in ("lut", "row_scale", "lut_scale", "lut_zero_point"):
            self.register_buffer(name, getattr(fake, name).detach().clone())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        scale = self.row_scale if self.row_scale.numel() else None
        dtype = original.dtype if original.is_floating_point() else self.dtype
        return decode_weight(self.layout, self.packed, self.lut, scale, dtype, self.n_bits)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return f"n_bits={self.n_bits}, packed={list(self.packed.shape)}, shape={self.layout.shape}"


@dataclass(frozen=True)
class CompressionReport:
    """What finalize stored: weights replaced, their dense and compressed bytes."""

    weights: int
    elements: int
    dense_bytes: int
    compressed_bytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.compressed_bytes / max(self.elements, 1)

    @property
    def saved_bytes(self) -> int:
        return self.dense_bytes - self.compressed_bytes


def replace_fake_palettizations(
    model: nn.Module, build: Callable[[FakePalettize, torch.dtype], nn.Module]
) -> CompressionReport:
    """Swap every FakePalettize parametrization of `model` for `build(fake, weight dtype)`,
    replacing the dense original by an empty tensor; returns what was stored. A FakePalettize
    that several modules share (tied weights) is built once, and its modules share the
    replacement and the empty original, so the tie survives (and is counted once)."""
    weights = elements = dense = compressed = 0
    built: dict[int, tuple[nn.Module, nn.Parameter]] = {}
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for state in list(module.parametrizations.keys()):
            chain = module.parametrizations[state]
            if len(chain) != 1 or not isinstance(chain[0], FakePalettize):
                continue
            fake, original = chain[0], chain.original
            if id(fake) not in built:
                replacement = build(fake, original.dtype)
                empty = torch.empty(0, dtype=original.dtype, device=original.device)
                built[id(fake)] = (replacement, nn.Parameter(empty, requires_grad=False))
                weights += 1
                elements += original.numel()
                dense += original.numel() * original.element_size()
                compressed += sum(b.numel() * b.element_size() for b in replacement.buffers())
            replacement, empty = built[id(fake)]
            parametrize.remove_parametrizations(module, state, leave_parametrized=False)
            setattr(module, state, empty)
            parametrize.register_parametrization(module, state, replacement, unsafe=True)
    return CompressionReport(weights, elements, dense, compressed)


def finalize_torch(model: nn.Module) -> CompressionReport:
    """Replace every FakePalettize parametrization of `model` by a PackedPalettize."""
    return replace_fake_palettizations(model, PackedPalettize)
