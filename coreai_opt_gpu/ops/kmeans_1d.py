"""Scalar k-means ops of the engine: Triton on CUDA tensors, numpy twins elsewhere.

Each op logs its kernels to the launch ledger (when one is recording) with the same names,
grids and logical bytes whichever backend runs, so a ledger recorded on the CPU (numpy twins)
describes the device run too; figures that depend on results (histogram spans, row lengths,
Lloyd passes) are filled in from those results when the ledger is read.
"""

from __future__ import annotations

import math

import torch

from coreai_opt_gpu import ledger, reference
from coreai_opt_gpu.backend import Backend, choose_backend
from coreai_opt_gpu.ledger import KernelSpec

SCAN_BLOCK = 1024  # entries per program of the histogram and scan kernels (as the kernels)
TABLE_BYTES = (1 << 16) * 4  # key -> slot table, read once per launch (it stays in L2)
F64 = 8


def _numpy(t: torch.Tensor | None):
    return None if t is None else t.detach().cpu().numpy()


def _tensor(a, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(a).to(device)


def _steps(width: int) -> int:
    """Binary-search steps over a row of `width` entries."""
    return max(1, int(width).bit_length())


def _search_steps(lengths: torch.Tensor) -> int:
    """Steps of a binary search that touch memory: about log2 of the longest row (the
    kernels run more, masked, because the row lengths are not read back)."""
    return _steps(int(lengths.max()))


def _sum_of(t: torch.Tensor) -> int:
    return int(t.to(torch.int64).sum())


def grid_histogram(
    x: torch.Tensor, key_to_slot: torch.Tensor, slot_values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fast-mode histograms of x [G, N] over value slots -> counts [G, >= span] int32, low
    [G] int32, span [G] int32 (see `reference.grid_histogram`)."""
    g, n = x.shape
    s = slot_values.numel()
    backend = choose_backend(x)
    tiles = (g, math.ceil(n / SCAN_BLOCK))
    read = g * n * x.element_size() + TABLE_BYTES
    specs = [
        KernelSpec("grid_histogram.slot_range", tiles, read, 8 * g),
        KernelSpec("grid_histogram.zero_span", (g, math.ceil(s / SCAN_BLOCK)), 8 * g, 0),
        KernelSpec("grid_histogram.count_slots", tiles, read + 4 * g, 0),
    ]
    with ledger.kernels(backend.value, specs, [("counts", 4 * g * s)]) as events:
        if backend == Backend.TRITON:
            from coreai_opt_gpu.kernels.kmeans_1d import grid_histogram as kernel

            counts, low, span = kernel(x, key_to_slot, s)
        else:
            arrays = reference.grid_histogram(_numpy(x.float()), _numpy(key_to_slot), s)
            counts, low, span = (_tensor(a, x.device) for a in arrays)
    if events:  # zeroing and the final counts: 4 bytes per slot of the span, each
        events[1].resolve = lambda: (0, 4 * _sum_of(span), 0)
        events[2].resolve = lambda: (0, 4 * _sum_of(span), 0)
    return counts, low, span


def histogram_rows(
    counts: torch.Tensor,
    low: torch.Tensor,
    span: torch.Tensor,
    slot_values: torch.Tensor,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Occupied slots as rows: values [G, width] f32, lengths [G] int32, prefix sums of
    counts, counts*v, counts*v^2 [G, width + 1] f64 (see `reference.histogram_rows`)."""
    g = counts.shape[0]
    s = slot_values.numel()
    backend = choose_backend(counts)
    tiles = (g, math.ceil(s / SCAN_BLOCK))
    totals = g * tiles[1] * 4 * F64
    specs = [
        KernelSpec("histogram_rows.totals", tiles, 0, totals),
        KernelSpec("histogram_rows.offsets", (g,), totals, totals),
        KernelSpec("histogram_rows.scan", tiles, totals, 0),
    ]
    allocations = [("values", 4 * g * width), ("prefix", 3 * F64 * g * (width + 1))]
    with ledger.kernels(backend.value, specs, allocations) as events:
        if backend == Backend.TRITON:
            from coreai_opt_gpu.kernels.kmeans_1d import histogram_rows as kernel

            result = kernel(counts, low, span, slot_values, width)
        else:
            arrays = reference.histogram_rows(
                _numpy(counts), _numpy(low), _numpy(span), _numpy(slot_values), width
            )
            result = tuple(_tensor(a, counts.device) for a in arrays)
    lengths = result[1]
    if events:  # both passes read the span's counts and slot values; the scan writes rows
        events[0].resolve = lambda: (8 * _sum_of(span), 0, 0)
        events[2].resolve = lambda: (
            8 * _sum_of(span),
            (4 + 3 * F64) * _sum_of(lengths) + 3 * F64 * g,
            0,
        )
    return result  # type: ignore[return-value]


def prefix_sums(
    values: torch.Tensor, weights: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Sorted rows [G, M] (weights [G, M] or None) -> prefix sums [G, M+1] f64 of w (None
    for unit weights), w*x, w*x^2 (see `reference.prefix_sums`)."""
    g, m = values.shape
    backend = choose_backend(values)
    tiles = (g, math.ceil(m / SCAN_BLOCK))
    row_bytes = g * m * (values.element_size() + (0 if weights is None else F64))
    totals = g * tiles[1] * 4 * F64
    arrays_out = 2 if weights is None else 3
    specs = [
        KernelSpec("prefix_sums.totals", tiles, row_bytes, totals),
        KernelSpec("prefix_sums.offsets", (g,), totals, totals),
        KernelSpec("prefix_sums.scan", tiles, row_bytes + totals, arrays_out * F64 * g * (m + 1)),
    ]
    with ledger.kernels(backend.value, specs, [("prefix", arrays_out * F64 * g * (m + 1))]):
        if backend == Backend.TRITON:
            from coreai_opt_gpu.kernels.kmeans_1d import prefix_sums as kernel

            return kernel(values, weights)
        arrays = reference.prefix_sums(_numpy(values), _numpy(weights))
        return tuple(None if a is None else _tensor(a, values.device) for a in arrays)  # type: ignore[return-value]


def coarse_dp_start(
    values: torch.Tensor,
    lengths: torch.Tensor,
    prefix_w: torch.Tensor | None,
    prefix_wx: torch.Tensor,
    prefix_wxx: torch.Tensor,
    k: int,
    bins: int,
) -> torch.Tensor:
    """Exact k-means of each row coarsened to `bins` runs -> start centroids [G, K] f64
    (see `reference.coarse_dp_start`)."""
    g = values.shape[0]
    backend = choose_backend(values)
    edges = bins + 1
    levels = max(1, bins.bit_length())
    scratch = g * (5 * F64 * edges + 2 * max(k - 1, 1) * edges)
    dp_steps = (k - 1) * (levels + math.ceil(bins / 32)) + k
    specs = [KernelSpec("coarse_dp_start", (g,), 3 * F64 * edges * g, scratch + F64 * g * k)]
    with ledger.kernels(
        backend.value, specs, [("dp_scratch", scratch), ("start", F64 * g * k)]
    ) as events:
        if backend == Backend.TRITON:
            from coreai_opt_gpu.kernels.kmeans_1d import coarse_dp_start as kernel

            start = kernel(values, lengths, prefix_w, prefix_wx, prefix_wxx, k, bins)
        else:
            arrays = (_numpy(t) for t in (values, lengths, prefix_w, prefix_wx, prefix_wxx))
            start = _tensor(reference.coarse_dp_start(*arrays, k, bins), values.device)
    if events:  # a binary search per edge over the row (a value and a weight prefix per step)
        events[0].resolve = lambda: (
            g * edges * _search_steps(lengths) * (4 + F64),
            0,
            _search_steps(lengths) + dp_steps,
        )
    return start


def lloyd_1d(
    values: torch.Tensor,
    lengths: torch.Tensor,
    prefix_w: torch.Tensor | None,
    prefix_wx: torch.Tensor,
    prefix_wxx: torch.Tensor,
    centroids: torch.Tensor,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd to convergence on rows -> centroids [G, K] f64, inertia [G] f64, updates [G]
    int32 (see `reference.lloyd_1d`)."""
    g = values.shape[0]
    k = centroids.shape[1]
    backend = choose_backend(values)
    specs = [KernelSpec("lloyd_1d", (g,), F64 * g * k, F64 * g * k + 12 * g)]
    allocations = [("centroids", F64 * g * k), ("inertia", 12 * g)]
    with ledger.kernels(backend.value, specs, allocations) as events:
        if backend == Backend.TRITON:
            from coreai_opt_gpu.kernels.kmeans_1d import lloyd_1d as kernel

            result = kernel(values, lengths, prefix_w, prefix_wx, prefix_wxx, centroids, max_iter)
        else:
            arrays = (_numpy(t) for t in (values, lengths, prefix_w, prefix_wx, prefix_wxx))
            out = reference.lloyd_1d(*arrays, _numpy(centroids.double()), max_iter)
            result = tuple(_tensor(a, values.device) for a in out)
    iterations = result[2]
    if events:  # per pass and lane: two searches and six prefix loads; passes = updates + 1
        events[0].resolve = lambda: (
            2 * k * (_search_steps(lengths) * 4 + 3 * F64) * (_sum_of(iterations) + g),
            0,
            (int(iterations.max()) + 1) * (2 * _search_steps(lengths) + 4),
        )
    return result  # type: ignore[return-value]


def assign_1d(
    x: torch.Tensor,
    centroids: torch.Tensor,
    key_to_slot: torch.Tensor | None = None,
    slot_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Nearest-centroid codes: x [G, N], centroids [G, K] ascending -> [G, N] uint8; fast
    mode (codes of the rounded values) when the tables are given (see `reference.assign_1d`)."""
    g, n = x.shape
    k = centroids.shape[1]
    backend = choose_backend(x)
    tables = 0 if key_to_slot is None else TABLE_BYTES + slot_values.numel() * 4
    read = g * n * x.element_size() + g * (k - 1) * 4 + tables
    specs = [
        KernelSpec("assign_1d.midpoints", (g,), F64 * g * k, 4 * g * (k - 1)),
        KernelSpec(
            "assign_1d", (g, math.ceil(n / 1024)), read, g * n, max(1, (k - 1).bit_length())
        ),
    ]
    with ledger.kernels(backend.value, specs, [("codes", g * n)]):
        if backend == Backend.TRITON:
            from coreai_opt_gpu.kernels.kmeans_1d import assign_1d as kernel

            return kernel(x, centroids, key_to_slot, slot_values)
        codes = reference.assign_1d(
            _numpy(x.float()), _numpy(centroids.double()), _numpy(key_to_slot), _numpy(slot_values)
        )
        return _tensor(codes, x.device)
