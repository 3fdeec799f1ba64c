"""Cluster many weights in few engine calls and decode them through the dequant op."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from coreai_opt_gpu.backend import Backend, choose_backend
from coreai_opt_gpu.engine import cluster_blocks
from coreai_opt_gpu.engine.cluster import chunks_like_device, scalar_block_bytes
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
    rows = weight.detach().reshape(weight.shape[0], -1)
    scale = torch.linalg.vector_norm(rows, float("inf"), dim=1).float()  # no copy of the weight
    return torch.where(scale > 0, scale, torch.ones_like(scale))


DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes of fp32 blocks sent to the engine at once


def compute_device(targets: list[WeightTarget]) -> torch.device:
    """Where the engine runs: the weights' device, or CUDA for CPU weights when present."""
    weight_device = targets[0].tensor.device if targets else torch.device("cpu")
    if weight_device.type == "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return weight_device


def has_sample_weights(target: WeightTarget, sensitivities: dict[str, torch.Tensor]) -> bool:
    """Whether the engine gets sample weights for this weight's blocks: sensitivities, or
    vectors under a per-channel scale (weighted per component, `_sample_weights`)."""
    scaled_vectors = target.layout.cluster_dim > 1 and target.spec.enable_per_channel_scale
    return target.qualified_name in sensitivities or scaled_vectors


def chunks_within(
    batch: list[WeightTarget], budget: int, weighted: frozenset[str] = frozenset()
) -> list[list[WeightTarget]]:
    """Split a batch into runs whose fp32 blocks, and their float32 sample weights for the
    weights named in `weighted` (as large as the blocks at most), total at most `budget`
    bytes (a weight larger than the budget goes alone)."""
    chunks: list[list[WeightTarget]] = [[]]
    used = 0
    for target in batch:
        size = target.tensor.numel() * 4 * (2 if target.qualified_name in weighted else 1)
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
    `compute_device`) in chunks of at most `memory_budget` bytes of fp32 blocks (and their
    sample weights, `chunks_within`); results come
    back to each weight's device. Scalar results do not depend on the chunking.
    """
    check_memory_budget(memory_budget)
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
    weighted = frozenset(t.qualified_name for t in targets if has_sample_weights(t, sensitivities))
    for (_, _, n_bits, precision, split), batch in batches.items():
        for chunk in chunks_within(batch, memory_budget, weighted):
            results.update(
                _palettize_chunk(
                    chunk, n_bits, precision, sensitivities, engine_device, memory_budget, split
                )
            )
            bar.update(len(chunk))
    bar.close()
    return results


def check_memory_budget(memory_budget: object) -> None:
    """Raise ValueError unless `memory_budget` is a whole number of bytes >= 1."""
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
        raise ValueError(
            f"memory_budget must be a whole number of bytes >= 1, got {memory_budget!r}"
        )


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
    """Cluster a chunk of same-shaped-block weights on `device`; the weights are checked
    already (`check_weights`), so the engine reads nothing back unless some block is beyond
    the fp16 range in fast mode.

    Scalar blocks go to the engine in calls of `blocks_per_call` blocks, read straight from
    each weight (a view where the layout allows, else a copy of those blocks) and written
    straight into each weight's indices: on the host nothing weight-sized is copied. Vector
    blocks of the chunk go in one call, as their k-means++ draws depend on the batch.
    """
    scales = [
        per_channel_scale(t.tensor) if t.spec.enable_per_channel_scale else None for t in chunk
    ]
    layout = chunk[0].layout
    k, d = 2**n_bits, layout.cluster_dim
    # vectors under a per-channel scale: each component weighs its row's scale squared, so the
    # clustering minimizes the error of the weight itself, not of the scaled weight
    weighted = any(has_sample_weights(t, sensitivities) for t in chunk)
    total = sum(t.layout.num_blocks for t in chunk)
    per_call = total
    if d == 1:
        per_call = blocks_per_call(
            layout.block_vectors, k, precision, weighted, memory_budget, device, total
        )
    outputs = [_Output.empty(t, k, d) for t in chunk]
    for batch in _batches(chunk, per_call):
        blocks = _gather([_blocks(chunk[i], scales[i], a, b) for i, a, b in batch], device)
        weights = None
        if weighted:
            weights = _gather(
                [_sample_weights(chunk[i], scales[i], sensitivities, a, b) for i, a, b in batch],
                device,
            )
        clustering = cluster_blocks(
            blocks,
            n_bits,
            weights,
            rounding_precision=precision,
            memory_budget=memory_budget,
            validate=beyond_fp16,
        )
        offset = 0
        for i, a, b in batch:
            rows = slice(offset, offset + b - a)
            outputs[i].store(a, clustering.lut[rows], clustering.indices[rows])
            offset += b - a
        del blocks, weights, clustering
    results = {}
    for t, scale, out in zip(chunk, scales, outputs, strict=True):
        lut, quantized = out.lut, None
        if t.spec.lut_qspec is not None:
            quantized = quantize_lut(lut, t.spec.lut_qspec)
            lut = quantized.lut
        results[t.qualified_name] = PalettizedWeight(
            t.spec, t.layout, lut, out.indices, scale, quantized
        )
    return results


HOST_WORKING_BYTES = 32 * 2**20  # engine working memory per call on the host path


def blocks_per_call(
    n: int,
    k: int,
    precision: int | None,
    weighted: bool,
    memory_budget: int,
    device: torch.device,
    total: int,
) -> int:
    """Scalar blocks of n values per engine call. On the host path the engine's working
    memory (`cluster.scalar_block_bytes` per block) stays within min(memory_budget,
    HOST_WORKING_BYTES): measured on a 4096x4096 layer (4 bits, group 16), 16-32 blocks per
    call were also the fastest (0.86 s vs 1.54 s for all 256 at once). On the device the
    engine chunks under `memory_budget` itself, so all blocks go in one call (also under
    `cluster.chunking("device")`, as the cost model records a device run)."""
    if chunks_like_device(choose_backend(torch.empty(0, device=device)) == Backend.TRITON):
        return total
    budget = min(memory_budget, HOST_WORKING_BYTES)
    return max(1, min(total, budget // scalar_block_bytes(n, k, precision, weighted)))


@dataclass
class _Output:
    """One weight's LUT [G, K, D] float32 and indices [V, C, T] uint8, filled block range by
    block range on the weight's device."""

    target: WeightTarget
    lut: torch.Tensor
    indices: torch.Tensor

    @classmethod
    def empty(cls, target: WeightTarget, k: int, d: int) -> _Output:
        home = target.tensor.device
        lut = torch.empty((target.layout.num_blocks, k, d), dtype=torch.float32, device=home)
        indices = torch.empty(target.layout.index_shape, dtype=torch.uint8, device=home)
        return cls(target, lut, indices)

    def store(self, start: int, lut: torch.Tensor, codes: torch.Tensor) -> None:
        """LUT rows [B, K, D] and codes [B, N] of blocks start..start+B-1."""
        self.lut[start : start + len(lut)].copy_(lut.reshape(len(lut), *self.lut.shape[1:]))
        self.target.layout.write_indices(self.indices, start, codes.to(self.indices.device))


def _batches(chunk: list[WeightTarget], per_call: int) -> Iterator[list[tuple[int, int, int]]]:
    """The chunk's blocks, in order, as engine calls of at most `per_call` blocks, each a
    list of (weight index, first block, last block + 1)."""
    batch: list[tuple[int, int, int]] = []
    room = per_call
    for i, target in enumerate(chunk):
        start, stop = 0, target.layout.num_blocks
        while start < stop:
            take = min(room, stop - start)
            batch.append((i, start, start + take))
            start += take
            room -= take
            if room == 0:
                yield batch
                batch, room = [], per_call
    if batch:
        yield batch


def _blocks(
    target: WeightTarget, scale: torch.Tensor | None, start: int, stop: int
) -> torch.Tensor:
    """Blocks start..stop-1 of the weight [B, N, D] (divided by its per-channel scale)."""
    weight = target.tensor.detach()
    if scale is None:
        return target.layout.read_blocks(weight, start, stop)
    shape = (-1, *([1] * (weight.dim() - 1)))
    divisor = scale.to(weight.dtype).reshape(shape).expand(weight.shape)
    return target.layout.read_scaled_blocks(weight, divisor, start, stop)


def _sample_weights(
    target: WeightTarget,
    scale: torch.Tensor | None,
    sensitivities: dict[str, torch.Tensor],
    start: int,
    stop: int,
) -> torch.Tensor:
    """Sample weights of blocks start..stop-1: scalars [B, N] (the sensitivities; 1 where the
    weight has none); vectors [B, N, D] per component, the vector's summed sensitivities (1
    without) times, under a per-channel scale [O], the component's row scale squared, that
    product divided by its block's largest (k-means does not see a block's constant factor,
    and float32 then neither underflows for tiny rows nor overflows for large ones)."""
    sensitivity = sensitivities.get(target.qualified_name)
    n, d = target.layout.block_vectors, target.layout.cluster_dim
    device = target.tensor.device
    if sensitivity is None:
        summed = torch.ones((stop - start, n), device=device)
    else:
        summed = target.layout.read_blocks(sensitivity.detach(), start, stop).float().sum(-1)
    if d == 1:
        return summed
    if scale is None:
        return summed[..., None].expand(-1, -1, d)
    weight = target.tensor
    rows = scale.to(device).reshape(-1, *([1] * (weight.dim() - 1))).expand(weight.shape)
    squared = target.layout.read_blocks(rows, start, stop).double().square()  # [B, N, D]
    product = squared * summed.double()[..., None]
    peak = product.flatten(1).amax(1).clamp_min(torch.finfo(torch.float64).tiny)  # [B]
    return (product / peak[:, None, None]).float()


def _gather(pieces: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Concatenate block pieces on `device` with one allocation there (no copy for a single
    piece already on it)."""
    if len(pieces) == 1:
        return pieces[0].to(device)
    dtype = pieces[0].dtype
    for piece in pieces[1:]:
        dtype = torch.promote_types(dtype, piece.dtype)
    out = torch.empty((sum(len(p) for p in pieces), *pieces[0].shape[1:]), dtype=dtype,
                      device=device)  # fmt: skip
    offset = 0
    for piece in pieces:
        out[offset : offset + len(piece)].copy_(piece)
        offset += len(piece)
    return out
