"""Engine entry point: cluster G blocks [G, N, D] into LUTs [G, K, D] and indices [G, N]."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from coreai_opt_gpu.backend import Backend, choose_backend
from coreai_opt_gpu.engine.fast_mode import fast_mode_table
from coreai_opt_gpu.engine.scalar import cluster_scalar, coarse_bins
from coreai_opt_gpu.engine.vector import cluster_vector

# On the host path scalar blocks are clustered ~16M values at a time: measured on the CPU,
# 1024 blocks of 64K values take 6.8 s in one call and 3.4 s in four (the temporaries outgrow
# the caches). On the device path chunks follow the memory budget instead.
SCALAR_CHUNK_VALUES = 1 << 24
DEFAULT_ENGINE_BUDGET = 2 * 2**30  # bytes of engine working memory per call on the device


def scalar_block_bytes(n: int, k: int, rounding_precision: int | None, weighted: bool) -> int:
    """Device working memory of one scalar block of n values (rows, prefix sums, DP scratch,
    codes), as the kernels allocate it."""
    bins = coarse_bins(k, n)
    dp = 5 * 8 * (bins + 1) + 2 * max(k - 1, 1) * (bins + 1) + 8 * k
    if rounding_precision is not None and not weighted:
        slots = fast_mode_table(rounding_precision, torch.device("cpu")).slots
        width = min(n, slots)
        rows = 4 * slots + 4 * width + 3 * 8 * (width + 1)
    else:
        rows = 4 * n + 8 * n + 3 * 8 * (n + 1) + (8 * n if weighted else 0)
    return rows + dp + 4 * n + n  # plus a float32 copy of the block and its codes


_CHUNKING = ["auto"]


@contextmanager
def chunking(policy: str) -> Iterator[None]:
    """Chunk scalar blocks as the "device" path or the "host" path does whatever runs them
    ("auto": by backend). The cost model records a device run's ledger on the host path."""
    if policy not in ("auto", "device", "host"):
        raise ValueError(f"chunking policy {policy!r} is not valid; allowed: auto, device, host")
    _CHUNKING.append(policy)
    try:
        yield
    finally:
        _CHUNKING.pop()


def chunks_like_device(on_device: bool) -> bool:
    """Whether scalar blocks are chunked as the device path chunks them (the `chunking`
    policy; "auto": when they are on the device)."""
    policy = _CHUNKING[-1]
    return policy == "device" or (policy == "auto" and on_device)


def scalar_chunk_blocks(
    n: int, k: int, rounding_precision: int | None, weighted: bool, memory_budget: int | None,
    on_device: bool,
) -> int:  # fmt: skip
    """Blocks of n values per engine call: by working memory under the budget on the device,
    ~16M values on the host."""
    if chunks_like_device(on_device):
        budget = DEFAULT_ENGINE_BUDGET if memory_budget is None else memory_budget
        return max(1, budget // scalar_block_bytes(n, k, rounding_precision, weighted))
    return max(1, SCALAR_CHUNK_VALUES // n)


@dataclass(frozen=True)
class Clustering:
    """Result of clustering G blocks: LUT [G, K, D], indices [G, N] uint8, inertia [G]."""

    lut: torch.Tensor
    indices: torch.Tensor
    inertia: torch.Tensor


def _weights_shapes(blocks: torch.Tensor) -> list[list[int]]:
    """The weight shapes the engine takes for blocks [G, N, D]: [G, N] (per value or per
    vector) and, for vectors, [G, N, D] (per component)."""
    g, n, d = blocks.shape
    return [[g, n]] + ([[g, n, d]] if d > 1 else [])


def _bad_weights(blocks: torch.Tensor, weights: torch.Tensor) -> ValueError:
    allowed = " or ".join(str(shape) for shape in _weights_shapes(blocks))
    return ValueError(f"weights must be finite, non-negative {allowed}, got {list(weights.shape)}")


def check_shapes(blocks: torch.Tensor, n_bits: int, weights: torch.Tensor | None) -> None:
    """Raise ValueError for shapes or bit widths the engine cannot cluster (no data read)."""
    if blocks.dim() != 3 or 0 in blocks.shape:
        raise ValueError(f"blocks must be a non-empty [G, N, D] tensor, got {list(blocks.shape)}")
    if not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits={n_bits} is not supported; allowed: 1..8")
    if weights is not None and list(weights.shape) not in _weights_shapes(blocks):
        raise _bad_weights(blocks, weights)


def check_blocks(blocks: torch.Tensor, n_bits: int, weights: torch.Tensor | None) -> None:
    """Raise ValueError for input the engine cannot cluster, saying what is wrong (reads the
    data: one sync on a device)."""
    check_shapes(blocks, n_bits, weights)
    if not torch.isfinite(blocks).all():
        bad = (~torch.isfinite(blocks)).flatten(1).any(1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"blocks contain NaN or inf (first blocks affected: {bad})")
    if weights is not None and (not torch.isfinite(weights).all() or (weights < 0).any()):
        raise _bad_weights(blocks, weights)


def cluster_blocks(
    blocks: torch.Tensor,
    n_bits: int,
    weights: torch.Tensor | None = None,
    *,
    rounding_precision: int | None = None,
    max_iter: int = 300,
    restarts: int = 8,
    seed: int | None = None,
    memory_budget: int | None = None,
    validate: bool = True,
) -> Clustering:
    """k-means with K = 2^n_bits of every block at once; results on the blocks' device.

    blocks [G, N, D] float, weights [G, N] (sample weights, e.g. sensitivities; per vector
    when D > 1), [G, N, D] for vectors (per component: the inertia is
    sum w[n, d] (x[n, d] - c[n, d])^2) or None.
    `rounding_precision` turns on fast mode (scalar only): values are cast to fp16 and rounded
    to that many decimals before clustering. Vector blocks (D > 1) run `restarts` k-means++
    restarts, reproducible for a given `seed` (None: drawn from torch's global RNG). LUT rows
    are ascending (lexicographic for vectors); unused entries repeat the last centroid.

    Scalar blocks on the device are clustered in chunks whose working memory stays within
    `memory_budget` bytes (default 2 GiB); results do not depend on the chunking.
    `validate=False` skips the checks that read data back (finite values and weights; in fast
    mode, which blocks exceed the fp16 range): the caller guarantees finite input within the
    fp16 range, and the scalar device path then never syncs with the host.
    """
    if validate:
        check_blocks(blocks, n_bits, weights)
    else:
        check_shapes(blocks, n_bits, weights)
    g, n, d = blocks.shape
    if d > 1:
        if rounding_precision is not None:
            raise ValueError("fast mode (rounding_precision) applies to cluster_dim=1 only")
        x = blocks.detach().to(torch.float32).contiguous()
        w = None if weights is None else weights.detach().to(torch.float32)
        lut, indices, inertia = cluster_vector(
            x, 2**n_bits, w, restarts=restarts, max_iter=max_iter, seed=seed
        )
        return Clustering(lut=lut, indices=indices, inertia=inertia)
    x = blocks.detach().reshape(g, n)
    w = None if weights is None else weights.detach().to(torch.float64)
    k = 2**n_bits
    on_device = choose_backend(x) == Backend.TRITON
    # blocks are independent: the same result whatever the chunking
    step = scalar_chunk_blocks(n, k, rounding_precision, w is not None, memory_budget, on_device)
    parts = [
        cluster_scalar(
            x[i : i + step],
            k,
            None if w is None else w[i : i + step],
            rounding_precision,
            max_iter,
            validate=validate,
        )
        for i in range(0, g, step)
    ]
    if len(parts) == 1:
        lut, indices, inertia = parts[0]
    else:
        lut, indices, inertia = (torch.cat(column) for column in zip(*parts, strict=True))
    return Clustering(lut=lut.reshape(g, -1, 1), indices=indices, inertia=inertia)
