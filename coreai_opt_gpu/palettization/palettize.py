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
from coreai_opt_gpu.palettization.targets import WeightTarget


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


def palettize_targets(targets: list[WeightTarget]) -> dict[str, PalettizedWeight]:
    """Palettize weights; blocks of equal (N, D, n_bits, fast mode) share one engine call."""
    for target in targets:
        missing = unsupported_features(target.spec)
        if missing:
            raise ValueError(f"{target.qualified_name}: {', '.join(missing)} is not supported yet")
    batches: dict[tuple, list[WeightTarget]] = defaultdict(list)
    for t in targets:
        key = (t.layout.block_vectors, t.layout.cluster_dim, t.spec.n_bits, t.rounding_precision)
        batches[key].append(t)
    results = {}
    for (_, _, n_bits, precision), batch in batches.items():
        blocks = torch.cat([t.layout.to_blocks(t.tensor.detach()) for t in batch])
        clustering = cluster_blocks(blocks, n_bits, rounding_precision=precision)
        start = 0
        for t in batch:
            stop = start + t.layout.num_blocks
            indices = t.layout.indices_from_blocks(clustering.indices[start:stop])
            lut = clustering.lut[start:stop]
            results[t.qualified_name] = PalettizedWeight(t.spec, t.layout, lut, indices)
            start = stop
    return results
