"""Cluster many weights in few engine calls and decode them through the dequant op."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from coreai_opt_gpu.engine import cluster_blocks
from coreai_opt_gpu.ops import lut_dequant
from coreai_opt_gpu.palettization.layout import PaletteLayout
from coreai_opt_gpu.palettization.spec import PalettizationSpec


@dataclass(frozen=True)
class PalettizedWeight:
    """LUT [G, K, D] and indices [V, C, T] (uint8, weight layout) of one weight."""

    spec: PalettizationSpec
    layout: PaletteLayout
    lut: torch.Tensor
    indices: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The palettized weight, shaped like the original."""
        decoded = lut_dequant(self.indices, self.layout.lut_view(self.lut), None, dtype)
        return decoded.reshape(self.layout.shape)

    def packed_bytes(self, lut_dtype: torch.dtype = torch.float16) -> int:
        """Storage with indices packed at n_bits each and the LUT in `lut_dtype`."""
        index_bits = self.indices.numel() * self.spec.n_bits
        lut_bytes = self.lut.numel() * torch.finfo(lut_dtype).bits // 8
        return math.ceil(index_bits / 8) + lut_bytes


def unsupported_features(spec: PalettizationSpec) -> list[str]:
    """Spec options the clustering path does not implement yet (never silently ignored)."""
    names = []
    if spec.enable_per_channel_scale:
        names.append("enable_per_channel_scale=True")
    if spec.lut_qspec is not None:
        names.append("lut_qspec")
    return names


def palettize_tensors(
    items: dict[str, tuple[torch.Tensor, PalettizationSpec, PaletteLayout]],
) -> dict[str, PalettizedWeight]:
    """Palettize named weights; blocks of equal (N, D, n_bits) share one engine call."""
    for name, (_, spec, _) in items.items():
        missing = unsupported_features(spec)
        if missing:
            raise ValueError(f"{name}: {', '.join(missing)} is not supported yet")
    batches: dict[tuple[int, int, int], list[str]] = defaultdict(list)
    for name, (_, spec, layout) in items.items():
        batches[(layout.block_vectors, layout.cluster_dim, spec.n_bits)].append(name)
    results = {}
    for (_, _, n_bits), names in batches.items():
        blocks = torch.cat([items[n][2].to_blocks(items[n][0].detach()) for n in names])
        clustering = cluster_blocks(blocks, n_bits)
        start = 0
        for name in names:
            _, spec, layout = items[name]
            stop = start + layout.num_blocks
            indices = layout.indices_from_blocks(clustering.indices[start:stop])
            results[name] = PalettizedWeight(spec, layout, clustering.lut[start:stop], indices)
            start = stop
    return results
