"""Cluster many weights in few engine calls and decode them through the dequant op."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from coreai_opt_gpu.engine import cluster_blocks
from coreai_opt_gpu.engine.fast_mode import FP16_MAX
from coreai_opt_gpu.engine.lut_quant import QuantizedLut, quantize_lut
from coreai_opt_gpu.ops import lut_dequant
from coreai_opt_gpu.palettization.layout import PaletteLayout
from coreai_opt_gpu.palettization.spec import PalettizationSpec
from coreai_opt_gpu.palettization.targets import WeightTarget


@dataclass(frozen=True)
class PalettizedWeight:
    """LUT [G, K, D] and indices [V, C, T] (uint8, weight layout) of one weight, with the
    per-row scale [O] (per-channel scale) and LUT quantization parameters when enabled."""

    spec: PalettizationSpec
    layout: PaletteLayout
    lut: torch.Tensor
    indices: torch.Tensor
    row_scale: torch.Tensor | None = None
    lut_quantization: QuantizedLut | None = None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The palettized weight, shaped like the original."""
        lut = self.layout.lut_view(self.lut)
        decoded = lut_dequant(self.indices, lut, self.row_scale, dtype)
        return decoded.reshape(self.layout.shape)

    def packed_bytes(self, lut_dtype: torch.dtype = torch.float16) -> int:
        """Storage: indices packed at n_bits each, the LUT in `lut_dtype` (or its quantized
        dtype, plus a scale and zero point per block), per-row scales in `lut_dtype`."""
        index_bits = self.indices.numel() * self.spec.n_bits
        qspec = self.spec.lut_qspec
        entry_bits = qspec.n_bits if qspec is not None else torch.finfo(lut_dtype).bits
        extra = 2 * self.lut.shape[0] * 4 if qspec is not None else 0
        scales = 0 if self.row_scale is None else self.row_scale.numel() * 2
        return math.ceil(index_bits / 8) + self.lut.numel() * entry_bits // 8 + extra + scales


def per_channel_scale(weight: torch.Tensor) -> torch.Tensor:
    """abs-max of every slice along dim 0 (0 -> 1): the per-channel scale [O] float32."""
    scale = weight.detach().float().abs().reshape(weight.shape[0], -1).amax(1)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes of fp32 blocks sent to the engine at once


def compute_device(targets: list[WeightTarget]) -> torch.device:
    """Where the engine runs: the weights' device, or CUDA for CPU weights when present."""
    weight_device = targets[0].tensor.device if targets else torch.device("cpu")
    if weight_device.type == "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return weight_device


def chunks_within(batch: list[WeightTarget], budget: int) -> list[list[WeightTarget]]:
    """Split a batch into runs whose fp32 blocks total at most `budget` bytes (a weight
    larger than the budget goes alone)."""
    chunks: list[list[WeightTarget]] = [[]]
    used = 0
    for target in batch:
        size = target.tensor.numel() * 4
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(target)
        used += size
    return chunks


def palettize_targets(
    targets: list[WeightTarget],
    sensitivities: dict[str, torch.Tensor] | None = None,
    progress: bool = False,
    *,
    device: torch.device | str | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, PalettizedWeight]:
    """Palettize weights; blocks of equal (N, D, n_bits, fast mode) share engine calls.

    `sensitivities` maps a weight's qualified name to non-negative importances shaped like
    the weight (summed over each vector) that weight its k-means; `progress` shows a bar.
    Weights stream to `device` (default: CUDA for CPU weights when present, see
    `compute_device`) in chunks of at most `memory_budget` bytes of fp32 blocks; results come
    back to each weight's device. Scalar results do not depend on the chunking.
    """
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    sensitivities = sensitivities or {}
    beyond_fp16 = check_weights(targets, sensitivities)
    batches: dict[tuple, list[WeightTarget]] = defaultdict(list)
    for t in targets:
        key = (
            t.layout.block_vectors,
            t.layout.cluster_dim,
            t.spec.n_bits,
            t.rounding_precision,
            t.qualified_name in beyond_fp16,
        )
        batches[key].append(t)
    engine_device = torch.device(device) if device is not None else compute_device(targets)
    results = {}
    bar = tqdm(total=len(targets), desc="Palettizing layers", unit="weight", disable=not progress)
    for (_, _, n_bits, precision, split), batch in batches.items():
        for chunk in chunks_within(batch, memory_budget):
            results.update(
                _palettize_chunk(
                    chunk, n_bits, precision, sensitivities, engine_device, memory_budget, split
                )
            )
            bar.update(len(chunk))
    bar.close()
    return results


def check_weights(targets: list[WeightTarget], sensitivities: dict[str, torch.Tensor]) -> set:
    """Raise ValueError naming the weight when a weight is not finite or its sensitivities are
    not finite and non-negative; return the names of fast-mode weights with values beyond the
    fp16 range (upstream clusters those blocks on their exact values, which the engine does
    after finding them). One host sync per device for all weights together."""
    checks: dict[torch.device, list[tuple[str, str, torch.Tensor]]] = defaultdict(list)
    for t in targets:
        weight = t.tensor.detach()
        largest = torch.linalg.vector_norm(weight, float("inf"))  # NaN if any; one read pass
        checks[weight.device].append((t.qualified_name, "weight", largest))
        sensitivity = sensitivities.get(t.qualified_name)
        if sensitivity is not None:
            if sensitivity.shape != weight.shape:
                raise ValueError(
                    f"{t.qualified_name}: sensitivities of shape {list(sensitivity.shape)} do "
                    f"not match the weight {list(weight.shape)}"
                )
            sensitivity = sensitivity.detach()
            checks[sensitivity.device].append((t.qualified_name, "sensitivity", sensitivity.amin()))
            checks[sensitivity.device].append(
                (
                    t.qualified_name,
                    "sensitivity_max",
                    torch.linalg.vector_norm(sensitivity, float("inf")),
                )
            )
    spec_of = {t.qualified_name: t for t in targets}
    beyond = set()
    for entries in checks.values():
        values = torch.stack([value.float() for _, _, value in entries]).tolist()  # one sync
        for (name, what, _), value in zip(entries, values, strict=True):
            if what == "weight" and not math.isfinite(value):
                shape = list(spec_of[name].tensor.shape)
                raise ValueError(
                    f"{name}: weight of shape {shape} contains NaN or inf; palettization "
                    f"needs finite weights"
                )
            if what == "sensitivity" and not value >= 0:
                raise ValueError(f"{name}: sensitivities must be non-negative (min {value})")
            if what == "sensitivity_max" and not math.isfinite(value):
                raise ValueError(f"{name}: sensitivities contain NaN or inf")
            if what == "weight" and value > FP16_MAX:
                beyond.add(name)
    return {
        name
        for name in beyond
        if spec_of[name].rounding_precision is not None
        and not spec_of[name].spec.enable_per_channel_scale  # scaled blocks are within [-1, 1]
    }


def _palettize_chunk(
    chunk: list[WeightTarget],
    n_bits: int,
    precision: int | None,
    sensitivities: dict[str, torch.Tensor],
    device: torch.device,
    memory_budget: int,
    beyond_fp16: bool,
) -> dict[str, PalettizedWeight]:
    """One engine call for a chunk of same-shaped-block weights, on `device`; the weights
    are checked already (`check_weights`), so the engine reads nothing back unless some block
    is beyond the fp16 range in fast mode."""
    scales = [
        per_channel_scale(t.tensor) if t.spec.enable_per_channel_scale else None for t in chunk
    ]
    blocks = torch.cat(
        [
            t.layout.to_blocks(_scaled(t.tensor.detach(), scale)).to(device)
            for t, scale in zip(chunk, scales, strict=True)
        ]
    )
    weights = _block_weights(chunk, sensitivities)
    clustering = cluster_blocks(
        blocks,
        n_bits,
        None if weights is None else weights.to(device),
        rounding_precision=precision,
        memory_budget=memory_budget,
        validate=beyond_fp16,
    )
    results, start = {}, 0
    for t, scale in zip(chunk, scales, strict=True):
        stop = start + t.layout.num_blocks
        home = t.tensor.device
        indices = t.layout.indices_from_blocks(clustering.indices[start:stop]).to(home)
        lut, quantized = clustering.lut[start:stop].to(home), None
        if t.spec.lut_qspec is not None:
            quantized = quantize_lut(lut, t.spec.lut_qspec)
            lut = quantized.lut
        results[t.qualified_name] = PalettizedWeight(
            t.spec, t.layout, lut, indices, scale, quantized
        )
        start = stop
    return results


def _block_weights(
    batch: list[WeightTarget], sensitivities: dict[str, torch.Tensor]
) -> torch.Tensor | None:
    """Sample weights [G, N] of a batch (1 where a weight has no sensitivities), or None."""
    if not any(t.qualified_name in sensitivities for t in batch):
        return None
    parts = []
    for t in batch:
        sensitivity = sensitivities.get(t.qualified_name)
        if sensitivity is None:
            sensitivity = torch.ones_like(t.tensor, dtype=torch.float32)
        if sensitivity.shape != t.tensor.shape:
            raise ValueError(
                f"{t.qualified_name}: sensitivities of shape "
                f"{list(sensitivity.shape)} do not match the weight "
                f"{list(t.tensor.shape)}"
            )
        blocks = t.layout.to_blocks(sensitivity.detach().float().to(t.tensor.device))
        parts.append(blocks.sum(-1))
    return torch.cat(parts)


def _scaled(weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    if scale is None:
        return weight
    return weight / scale.reshape(-1, *([1] * (weight.dim() - 1))).to(weight.dtype)
