"""Scalar k-means kernels: the whole cluster_dim=1 engine on the device.

Twins (same names, same contracts): `coreai_opt_gpu.reference.grid_histogram`,
`histogram_rows`, `prefix_sums`, `coarse_dp_start`, `lloyd_1d`, `assign_1d`.

A block becomes a row of ascending values [G, W] float32 (the first lengths[g] valid) with
float64 prefix sums of w, w*x, w*x^2 ([G, W+1], leading 0; no weight prefix for unit weights).
Fast mode builds rows from a histogram over value slots (`engine.fast_mode`), exact mode from
sorted blocks. Centroids, boundaries and costs are float64 throughout, compared and combined in
the twins' operation order, so that given the same prefix sums the results match bit for bit
(FMA contraction is switched off where it would reorder rounding). Division: Triton lowers
float64 `/` to IEEE `div.rn.f64` (the compile test checks), while float32 `/` would be
approximate, so no float32 division appears here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

EXACT = {"enable_fp_fusion": False}  # keep a*b+c as two roundings, as numpy computes it
# Latency-bound kernels: left alone, ptxas picked 40-64 registers and spilled 4-28 bytes of
# the binary searches' state on sm_80/sm_90; an explicit cap of 128 removes every spill.
LATENCY = {**EXACT, "maxnreg": 128}
SCAN_BLOCK = 1024  # entries per program of the histogram and prefix-sum passes


@triton.jit
def _fp16_key(x):
    """Order-preserving 16-bit key of fp16(x) (round to nearest even) as int32."""
    bits = x.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return tl.where(bits >= 0x8000, (~bits) & 0xFFFF, bits | 0x8000)


# ---------------------------------------------------------------------------------------------
# grid_histogram: per-block slot range, then counts of each slot


@triton.jit
def _slot_range_kernel(
    x_ptr,  # [G, N] float (any float dtype)
    key_to_slot_ptr,  # [65536] int32
    low_ptr,  # [G] int32, starts at a large value
    high_ptr,  # [G] int32, starts at -1
    N,
    BLOCK: tl.constexpr,
):
    """low[g] = min slot of block g, high[g] = max slot (one atomic per program)."""
    g = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = j < N
    x = tl.load(x_ptr + g * N + j, mask=mask, other=0.0).to(tl.float32)
    slot = tl.load(key_to_slot_ptr + _fp16_key(x), mask=mask, other=0)
    tl.atomic_min(low_ptr + g, tl.min(tl.where(mask, slot, 1 << 30), axis=0))
    tl.atomic_max(high_ptr + g, tl.max(tl.where(mask, slot, -1), axis=0))


@triton.jit
def _zero_span_kernel(counts_ptr, low_ptr, high_ptr, S, BLOCK: tl.constexpr):
    """counts[g, j] = 0 for j < span[g]: only the used part of each [S] row is touched."""
    g = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    span = tl.load(high_ptr + g) - tl.load(low_ptr + g) + 1
    tl.store(counts_ptr + g * S + j, tl.zeros([BLOCK], tl.int32), mask=j < span)


@triton.jit
def _count_slots_kernel(x_ptr, key_to_slot_ptr, low_ptr, counts_ptr, N, S, BLOCK: tl.constexpr):
    """counts[g, slot(x) - low[g]] += 1 for every element (integer atomics: deterministic)."""
    g = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = j < N
    x = tl.load(x_ptr + g * N + j, mask=mask, other=0.0).to(tl.float32)
    slot = tl.load(key_to_slot_ptr + _fp16_key(x), mask=mask, other=0)
    low = tl.load(low_ptr + g)
    tl.atomic_add(counts_ptr + g * S + (slot - low), tl.full([BLOCK], 1, tl.int32), mask=mask)


def grid_histogram(
    x: torch.Tensor, key_to_slot: torch.Tensor, n_slots: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [G, N] -> counts [G, n_slots] int32 (valid below span), low [G], span [G] int32."""
    g, n = x.shape
    x = x.contiguous()
    low = torch.full((g,), 1 << 30, dtype=torch.int32, device=x.device)
    high = torch.full((g,), -1, dtype=torch.int32, device=x.device)
    counts = torch.empty((g, n_slots), dtype=torch.int32, device=x.device)
    tiles = (g, triton.cdiv(n, SCAN_BLOCK))
    _slot_range_kernel[tiles](x, key_to_slot, low, high, n, BLOCK=SCAN_BLOCK, num_warps=4)
    _zero_span_kernel[(g, triton.cdiv(n_slots, SCAN_BLOCK))](
        counts, low, high, n_slots, BLOCK=SCAN_BLOCK, num_warps=4
    )
    _count_slots_kernel[tiles](
        x, key_to_slot, low, counts, n, n_slots, BLOCK=SCAN_BLOCK, num_warps=4
    )
    return counts, low, high - low + 1


# ---------------------------------------------------------------------------------------------
# histogram_rows / prefix_sums: a two-pass scan (tile totals, then tiles with their offsets)


@triton.jit
def _row_tile(
    values_ptr, weights_ptr, counts_ptr, low_ptr, span_ptr, slot_values_ptr, g, t, N, S,
    HISTOGRAM: tl.constexpr, HAS_W: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Tile t of row g: (keep [BLOCK] bool, w, v float64 [BLOCK]). Histogram rows keep the
    occupied slots; sorted rows keep every valid entry."""
    j = t * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    if HISTOGRAM:
        span = tl.load(span_ptr + g)
        valid = j < span
        w = tl.load(counts_ptr + g * S + j, mask=valid, other=0).to(tl.float64)
        low = tl.load(low_ptr + g).to(tl.int64)
        v = tl.load(slot_values_ptr + low + j, mask=valid, other=0.0).to(tl.float64)
        keep = w > 0
    else:
        keep = j < N
        v = tl.load(values_ptr + g * N + j, mask=keep, other=0.0).to(tl.float64)
        if HAS_W:
            w = tl.load(weights_ptr + g * N + j, mask=keep, other=0.0).to(tl.float64)
        else:
            w = tl.where(keep, 1.0, 0.0).to(tl.float64)
    return keep, w, v


@triton.jit
def _row_totals_kernel(
    values_ptr, weights_ptr, counts_ptr, low_ptr, span_ptr, slot_values_ptr,
    totals_ptr,  # [G, T, 4] float64: kept entries, sum w, sum w*x, sum w*x^2 of each tile
    N, S, T,
    HISTOGRAM: tl.constexpr, HAS_W: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    g = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1).to(tl.int64)
    keep, w, v = _row_tile(
        values_ptr, weights_ptr, counts_ptr, low_ptr, span_ptr, slot_values_ptr, g, t, N, S,
        HISTOGRAM, HAS_W, BLOCK,
    )  # fmt: skip
    wx = w * v
    out = totals_ptr + (g * T + t) * 4
    tl.store(out, tl.sum(keep.to(tl.float64), axis=0))
    tl.store(out + 1, tl.sum(w, axis=0))
    tl.store(out + 2, tl.sum(wx, axis=0))
    tl.store(out + 3, tl.sum(wx * v, axis=0))


@triton.jit
def _row_scan_kernel(
    values_ptr, weights_ptr, counts_ptr, low_ptr, span_ptr, slot_values_ptr,
    offsets_ptr,  # [G, T, 4] float64: exclusive prefix of the tile totals
    out_values_ptr,  # [G, W] float32 (histogram rows only)
    prefix_w_ptr, prefix_wx_ptr, prefix_wxx_ptr,  # [G, W+1] float64
    N, S, T, W,
    HISTOGRAM: tl.constexpr, HAS_W: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Kept entry number p of row g (p from the tile offsets plus a local scan) gets its value
    at out_values[g, p] and the running sums through it at prefix[g, p + 1]."""
    g = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1).to(tl.int64)
    keep, w, v = _row_tile(
        values_ptr, weights_ptr, counts_ptr, low_ptr, span_ptr, slot_values_ptr, g, t, N, S,
        HISTOGRAM, HAS_W, BLOCK,
    )  # fmt: skip
    base = offsets_ptr + (g * T + t) * 4
    wx = w * v
    position = tl.load(base).to(tl.int64) + tl.cumsum(keep.to(tl.int64), axis=0)  # p + 1
    row = g * (W + 1)
    tl.store(prefix_wx_ptr + row + position, tl.load(base + 2) + tl.cumsum(wx, axis=0), mask=keep)
    tl.store(
        prefix_wxx_ptr + row + position, tl.load(base + 3) + tl.cumsum(wx * v, axis=0), mask=keep
    )
    if HISTOGRAM or HAS_W:
        tl.store(prefix_w_ptr + row + position, tl.load(base + 1) + tl.cumsum(w, axis=0), mask=keep)
    if HISTOGRAM:
        tl.store(out_values_ptr + g * W + position - 1, v.to(tl.float32), mask=keep)
    if t == 0:
        tl.store(prefix_wx_ptr + row, 0.0)
        tl.store(prefix_wxx_ptr + row, 0.0)
        if HISTOGRAM or HAS_W:
            tl.store(prefix_w_ptr + row, 0.0)


def _scan_rows(g, tiles, width, device, histogram, has_w, pointers, n, s):
    """Both passes; returns (values or None, prefix_w or None, prefix_wx, prefix_wxx, kept)."""
    totals = torch.empty((g, tiles, 4), dtype=torch.float64, device=device)
    grid = (g, tiles)
    flags = {"HISTOGRAM": histogram, "HAS_W": has_w, "BLOCK": SCAN_BLOCK, "num_warps": 4}
    _row_totals_kernel[grid](*pointers, totals, n, s, tiles, **flags)
    inclusive = torch.cumsum(totals, dim=1)
    offsets = inclusive - totals
    values = torch.empty((g, width), dtype=torch.float32, device=device) if histogram else None
    prefix = [torch.empty((g, width + 1), dtype=torch.float64, device=device) for _ in range(3)]
    if not (histogram or has_w):
        prefix[0] = None
    dummy = prefix[1]
    _row_scan_kernel[grid](
        *pointers, offsets, values if values is not None else dummy,
        prefix[0] if prefix[0] is not None else dummy, prefix[1], prefix[2],
        n, s, tiles, width, **flags,
    )  # fmt: skip
    return values, *prefix, inclusive[:, -1, 0]


def histogram_rows(
    counts: torch.Tensor,
    low: torch.Tensor,
    span: torch.Tensor,
    slot_values: torch.Tensor,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Occupied slots of each histogram as rows: values [G, width] f32, lengths [G] int32,
    prefix sums of counts, counts*v, counts*v^2 [G, width+1] f64 (see the twin)."""
    g, s = counts.shape
    tiles = max(1, triton.cdiv(s, SCAN_BLOCK))
    pointers = (counts, counts, counts, low, span, slot_values)  # values/weights unused
    values, pw, pwx, pwxx, kept = _scan_rows(
        g, tiles, width, counts.device, True, True, pointers, 0, s
    )
    return values, kept.to(torch.int32), pw, pwx, pwxx


def prefix_sums(
    values: torch.Tensor, weights: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Sorted rows [G, M] (weights [G, M] or None) -> prefix sums [G, M+1] f64 of w (None
    for unit weights), w*x, w*x^2 (see the twin)."""
    g, m = values.shape
    values = values.contiguous()
    w = weights.contiguous() if weights is not None else values
    tiles = max(1, triton.cdiv(m, SCAN_BLOCK))
    dummy_i = torch.empty(1, dtype=torch.int32, device=values.device)
    pointers = (values, w, dummy_i, dummy_i, dummy_i, values)
    _, pw, pwx, pwxx, _ = _scan_rows(
        g, tiles, m, values.device, False, weights is not None, pointers, m, 0
    )
    return pw, pwx, pwxx


# ---------------------------------------------------------------------------------------------
# coarse_dp_start: mixed-score bin edges, then the exact DP over the bins, then backtracking


@triton.jit
def _prefix_w_at(prefix_w_ptr, row, index, mask, HAS_W: tl.constexpr):
    """Weight prefix at `index` of the row starting at `row`; the index itself for unit
    weights."""
    if HAS_W:
        return tl.load(prefix_w_ptr + row + index, mask=mask, other=0.0)
    return tl.where(mask, index.to(tl.float64), 0.0)


@triton.jit
def _run_cost(coarse_ptr, stride, j, i):
    """Squared error of bins [j, i) around their mean, from coarse prefix sums (twin:
    `_PrefixSums.cost`): max(S2 - S1 * S1 / S0, 0), 0 for an empty run."""
    s0 = tl.load(coarse_ptr + i) - tl.load(coarse_ptr + j)
    s1 = tl.load(coarse_ptr + stride + i) - tl.load(coarse_ptr + stride + j)
    s2 = tl.load(coarse_ptr + 2 * stride + i) - tl.load(coarse_ptr + 2 * stride + j)
    s0 = tl.where(s0 <= 0, 1.0, s0)
    return tl.maximum(s2 - s1 * s1 / s0, 0.0)


@triton.jit
def _coarse_dp_start_kernel(
    values_ptr,  # [G, W] float32 rows, ascending
    lengths_ptr,  # [G] int32
    prefix_w_ptr, prefix_wx_ptr, prefix_wxx_ptr,  # [G, W+1] float64
    order_ptr, left_ptr, right_ptr, level_start_ptr,  # recursion tree of bins 1..B (int32)
    coarse_ptr,  # scratch [G, 3, B+1] float64: prefix sums at the bin edges
    cost_ptr,  # scratch [G, 2, B+1] float64: DP layers (ping-pong)
    opt_ptr,  # scratch [G, K-1, B+1] int16: argmins per layer
    out_ptr,  # [G, K] float64 centroids
    W, K, B, n_levels, n_steps,
    HAS_W: tl.constexpr,
    BLOCK_E: tl.constexpr,  # bin edges computed at once
    ROWS: tl.constexpr,  # DP rows (bin counts i) per tile
    COLS: tl.constexpr,  # candidate split points j per tile
    K_PAD: tl.constexpr,  # 256 (the largest K): one compiled kernel for every K
):  # fmt: skip
    """One program per block. Edges e_c (c = 0..B) as in the twin's `coarse_edges`; then
    D_0[i] = cost(0, i) and D_k[i] = min_j D_k-1[j] + cost(j, i), each layer by divide and
    conquer (rows by depth of the recursion tree, so candidates of row i lie between the
    argmins of the nearest shallower rows around it: the twin's recursion); then backtracking
    to run means, empty runs dropped and the last centroid repeated."""
    g = tl.program_id(0).to(tl.int64)
    m = tl.load(lengths_ptr + g).to(tl.int64)
    row_v = values_ptr + g * W
    row_p = g * (W + 1)
    coarse = coarse_ptr + g * 3 * (B + 1)
    costs = cost_ptr + g * 2 * (B + 1)
    opts = opt_ptr + g * (K - 1) * (B + 1)
    stride = B + 1

    # 1. edges and the prefix sums there
    total = _prefix_w_at(prefix_w_ptr, row_p, m, True, HAS_W)
    total = tl.where(total > 0, total, 1.0)
    low = tl.load(row_v).to(tl.float64)
    spread = tl.load(row_v + tl.maximum(m - 1, 0)).to(tl.float64) - low
    spread = tl.where(spread > 0, spread, 1.0)
    for start in range(0, B + 1, BLOCK_E):
        c = start + tl.arange(0, BLOCK_E).to(tl.int64)  # [BLOCK_E]
        c_mask = c <= B
        target = c.to(tl.float64) / B
        lo = tl.zeros([BLOCK_E], tl.int64)
        hi = tl.zeros([BLOCK_E], tl.int64) + m
        for _ in range(n_steps):  # #{j < m : u(j) <= c / B}
            active = (lo < hi) & c_mask
            mid = (lo + hi) // 2
            mass = _prefix_w_at(prefix_w_ptr, row_p, tl.minimum(mid + 1, m), c_mask, HAS_W)
            mass = mass / total
            v = tl.load(row_v + mid, mask=active, other=0.0).to(tl.float64)
            u = 0.5 * mass + 0.5 * ((v - low) / spread)
            right = u <= target
            lo = tl.where(active & right, mid + 1, lo)
            hi = tl.where(active & (~right), mid, hi)
        edge = tl.where(c == 0, 0, tl.where(c == B, m, lo))
        edge = tl.where(m <= B, tl.minimum(c, m), edge)
        edge = tl.where(c_mask, edge, m)
        tl.store(coarse + c, _prefix_w_at(prefix_w_ptr, row_p, edge, c_mask, HAS_W), mask=c_mask)
        tl.store(coarse + stride + c, tl.load(prefix_wx_ptr + row_p + edge), mask=c_mask)
        tl.store(coarse + 2 * stride + c, tl.load(prefix_wxx_ptr + row_p + edge), mask=c_mask)
    tl.debug_barrier()

    # 2. the first layer: one cluster over bins [0, i)
    for start in range(0, B + 1, BLOCK_E):
        i = start + tl.arange(0, BLOCK_E).to(tl.int64)
        i_mask = i <= B
        cost = _run_cost(coarse, stride, tl.zeros([BLOCK_E], tl.int64), tl.where(i_mask, i, 0))
        tl.store(costs + i, cost, mask=i_mask)
    tl.debug_barrier()

    # 3. layers 1..K-1, each by divide and conquer over the recursion tree's levels
    r = tl.arange(0, ROWS)
    q = tl.arange(0, COLS).to(tl.int64)
    for layer in range(1, K):
        prev = costs + ((layer - 1) % 2) * stride
        cur = costs + (layer % 2) * stride
        opt = opts + (layer - 1) * stride
        tl.store(cur, 0.0)
        for level in range(n_levels):
            first = tl.load(level_start_ptr + level)
            last = tl.load(level_start_ptr + level + 1)
            for tile in range(first, last, ROWS):
                slot = tile + r
                row_mask = slot < last
                i = tl.load(order_ptr + slot, mask=row_mask, other=1).to(tl.int64)  # [ROWS]
                left = tl.load(left_ptr + slot, mask=row_mask, other=0).to(tl.int64)
                right = tl.load(right_ptr + slot, mask=row_mask, other=B + 1).to(tl.int64)
                o_low = tl.where(left == 0, 0, tl.load(opt + left, mask=left > 0, other=0))
                o_high = tl.where(right > B, B, tl.load(opt + right, mask=right <= B, other=0))
                o_low = o_low.to(tl.int64)
                j_high = tl.minimum(i, o_high.to(tl.int64))  # candidates j in [o_low, j_high]
                count = tl.max(tl.where(row_mask, j_high - o_low + 1, 0), axis=0)
                best = tl.full([ROWS], float("inf"), tl.float64)
                best_j = o_low
                for offset in range(0, count, COLS):
                    j = o_low[:, None] + offset + q[None, :]  # [ROWS, COLS]
                    valid = (j <= j_high[:, None]) & row_mask[:, None]
                    j_safe = tl.where(valid, j, 0)
                    i_safe = tl.where(valid, i[:, None], 0)
                    # cost(j, i) inlined (a nested jit call per tile is slow in the interpreter)
                    s0 = tl.load(coarse + i_safe) - tl.load(coarse + j_safe)
                    s1 = tl.load(coarse + stride + i_safe) - tl.load(coarse + stride + j_safe)
                    s2 = tl.load(coarse + 2 * stride + i_safe) - tl.load(
                        coarse + 2 * stride + j_safe
                    )
                    s0 = tl.where(s0 <= 0, 1.0, s0)
                    cost = tl.maximum(s2 - s1 * s1 / s0, 0.0)
                    value = tl.load(prev + j_safe, mask=valid, other=0.0) + cost
                    value = tl.where(valid, value, float("inf"))
                    chunk_best, chunk_arg = tl.min(
                        value, axis=1, return_indices=True, return_indices_tie_break_left=True
                    )
                    chunk_j = o_low + offset + chunk_arg
                    better = chunk_best < best  # strict: the leftmost argmin stays
                    best_j = tl.where(better, chunk_j, best_j)
                    best = tl.where(better, chunk_best, best)
                tl.store(cur + i, best, mask=row_mask)
                tl.store(opt + i, best_j.to(tl.int16), mask=row_mask)
            tl.debug_barrier()  # the next level reads this level's argmins

    # 4. backtracking: centroid of each run (NaN for an empty run)
    ends = tl.zeros((), tl.int64) + B
    for t in range(0, K - 1):
        cluster = K - 1 - t
        starts = tl.load(opts + (cluster - 1) * stride + ends).to(tl.int64)
        s0 = tl.load(coarse + ends) - tl.load(coarse + starts)
        s1 = tl.load(coarse + stride + ends) - tl.load(coarse + stride + starts)
        tl.store(
            out_ptr + g * K + cluster,
            tl.where(s0 > 0, s1 / tl.where(s0 > 0, s0, 1.0), float("nan")),
        )
        ends = starts
    s0 = tl.load(coarse + ends) - tl.load(coarse)
    s1 = tl.load(coarse + stride + ends) - tl.load(coarse + stride)
    tl.store(out_ptr + g * K, tl.where(s0 > 0, s1 / tl.where(s0 > 0, s0, 1.0), float("nan")))
    tl.debug_barrier()

    # 5. used centroids first, the rest repeating the last used one (0 without any)
    k = tl.arange(0, K_PAD)
    means = tl.load(out_ptr + g * K + k, mask=k < K, other=float("nan"))
    used = (means == means) & (k < K)
    position = tl.cumsum(used.to(tl.int32), axis=0) - 1
    n_used = tl.sum(used.to(tl.int32), axis=0)
    tl.debug_barrier()
    tl.store(out_ptr + g * K + position, means, mask=used)
    tl.debug_barrier()
    last = tl.load(out_ptr + g * K + tl.maximum(n_used - 1, 0))
    last = tl.where(n_used > 0, last, 0.0)
    tl.store(
        out_ptr + g * K + k, tl.zeros([K_PAD], tl.float64) + last, mask=(k >= n_used) & (k < K)
    )


_trees: dict[tuple[int, str], tuple[torch.Tensor, ...]] = {}


def recursion_tree(bins: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The twin's divide-and-conquer recursion over rows 1..bins, level by level: order [B]
    (rows grouped by depth), left/right [B] (the nearest shallower rows around each, 0 and
    B + 1 at the ends), level_start [levels + 1]; int32, built once per size and device."""
    key = (bins, str(device))
    if key not in _trees:
        from coreai_opt_gpu import ledger

        with ledger.host_work():
            order, left, right, starts = [], [], [], [0]
            level = [(1, bins)]
            while level:
                following = []
                for lo, hi in level:
                    mid = (lo + hi) // 2
                    order.append(mid)
                    left.append(lo - 1)
                    right.append(hi + 1)
                    if lo <= mid - 1:
                        following.append((lo, mid - 1))
                    if mid + 1 <= hi:
                        following.append((mid + 1, hi))
                starts.append(len(order))
                level = following
            host = tuple(torch.tensor(a, dtype=torch.int32) for a in (order, left, right, starts))
        if torch.device(device).type == "cpu":
            _trees[key] = host
        else:
            with ledger.upload("recursion_tree", *host):
                _trees[key] = tuple(t.to(device) for t in host)
    return _trees[key]


@dataclass(frozen=True)
class CoarseDpLaunch:
    """Tiles of the DP: ROWS rows (bin counts) x COLS candidates."""

    rows: int
    cols: int
    num_warps: int


DP_EDGES_BLOCK = 256  # bin edges searched at once
MAX_K = 256
# 32 x 32 candidates on four warps took 200-240 registers; on eight, under the 128 cap, none spill
DP_TILES = (CoarseDpLaunch(16, 16, 2), CoarseDpLaunch(32, 32, 8))


def coarse_dp_launch(bins: int) -> CoarseDpLaunch:
    """Pure heuristic: 32 x 32 candidate tiles (16 x 16 for small DPs)."""
    return DP_TILES[0] if bins <= 64 else DP_TILES[1]


def coarse_dp_start(
    values: torch.Tensor,
    lengths: torch.Tensor,
    prefix_w: torch.Tensor | None,
    prefix_wx: torch.Tensor,
    prefix_wxx: torch.Tensor,
    k: int,
    bins: int,
    launch: CoarseDpLaunch | None = None,
) -> torch.Tensor:
    """Exact k-means of each row coarsened to `bins` runs -> centroids [G, K] f64."""
    g, w = values.shape
    if bins >= 1 << 15:
        raise ValueError(f"bins={bins} is too many for the DP (int16 argmins); allowed < 32768")
    device = values.device
    launch = launch or coarse_dp_launch(bins)
    order, left, right, starts = recursion_tree(bins, device)
    coarse = torch.empty((g, 3, bins + 1), dtype=torch.float64, device=device)
    costs = torch.empty((g, 2, bins + 1), dtype=torch.float64, device=device)
    opts = torch.empty((g, max(k - 1, 1), bins + 1), dtype=torch.int16, device=device)
    out = torch.empty((g, k), dtype=torch.float64, device=device)
    _coarse_dp_start_kernel[(g,)](
        values.contiguous(), lengths, prefix_w if prefix_w is not None else prefix_wx,
        prefix_wx, prefix_wxx, order, left, right, starts, coarse, costs, opts, out,
        w, k, bins, starts.numel() - 1, max(1, w.bit_length()),
        HAS_W=prefix_w is not None, BLOCK_E=DP_EDGES_BLOCK,
        ROWS=launch.rows, COLS=launch.cols, K_PAD=MAX_K,
        num_warps=launch.num_warps, **LATENCY,
    )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# lloyd_1d


@triton.jit
def _count_at_most(row_ptr, bound, lane_mask, length, n_steps):
    """Per lane: #{v in the row's first `length` entries : v <= bound} (binary search;
    row_ptr [BPP, 1] row starts, bound [BPP, K_PAD] float64, n_steps >= log2(W + 1))."""
    lo = tl.zeros(bound.shape, tl.int32)  # rows are shorter than 2^31: int32 halves registers
    hi = tl.zeros(bound.shape, tl.int32) + length
    for _ in range(n_steps):
        active = (lo < hi) & lane_mask
        mid = (lo + hi) >> 1
        v = tl.load(row_ptr + mid, mask=active, other=0.0).to(tl.float64)
        right = v <= bound
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & (~right), mid, hi)
    return lo


@triton.jit
def _lloyd_1d_kernel(
    values_ptr,  # [G, W] float32 rows, ascending
    lengths_ptr,  # [G] int32
    prefix_w_ptr, prefix_wx_ptr, prefix_wxx_ptr,  # [G, W+1] float64
    centroids_ptr,  # [G, K] float64: the start on entry, the result on exit
    inertia_ptr,  # [G] float64
    iterations_ptr,  # [G] int32
    G, W, K, max_iter, n_steps,
    HAS_W: tl.constexpr,
    BPP: tl.constexpr,  # blocks per program: BPP * K_PAD lanes keep a warp busy at small K
    K_PAD: tl.constexpr,
):  # fmt: skip
    """Per block, passes until it stops: b_k = #{x <= (c_k-1 + c_k) / 2} for the current
    centroids, their inertia sum_k max(S2 - 2 c S1 + c^2 S0, 0), then c_k <- S1 / S0 (kept
    where S0 = 0) unless this was pass max_iter; a block stops when no centroid moved."""
    block = tl.program_id(0).to(tl.int64) * BPP + tl.arange(0, BPP).to(tl.int64)  # [BPP]
    k = tl.arange(0, K_PAD).to(tl.int64)  # [K_PAD]
    b_mask = block < G
    lane = b_mask[:, None] & (k < K)[None, :]  # [BPP, K_PAD]
    has_lower = lane & (k >= 1)[None, :]
    has_upper = lane & ((k + 1) < K)[None, :]
    length = tl.load(lengths_ptr + block, mask=b_mask, other=0)[:, None]  # int32
    rows = values_ptr + block[:, None] * W  # [BPP, 1]
    prefix_row = block[:, None] * (W + 1)
    cent = centroids_ptr + block[:, None] * K + k[None, :]  # [BPP, K_PAD]
    c = tl.load(cent, mask=lane, other=0.0)
    active = b_mask
    iterations = tl.zeros([BPP], tl.int32)
    inertia = tl.zeros([BPP], tl.float64)
    step = tl.full((), 0, tl.int32)
    while tl.max(active.to(tl.int32), axis=0) > 0:
        c_below = tl.load(cent - 1, mask=has_lower, other=0.0)
        c_above = tl.load(cent + 1, mask=has_upper, other=0.0)
        lower = _count_at_most(rows, (c_below + c) * 0.5, has_lower, length, n_steps)
        upper = _count_at_most(rows, (c + c_above) * 0.5, has_upper, length, n_steps)
        lower = tl.where(has_lower, lower, 0)
        upper = tl.where(has_upper, upper, length)
        s0 = _prefix_w_at(prefix_w_ptr, prefix_row, upper, lane, HAS_W) - _prefix_w_at(
            prefix_w_ptr, prefix_row, lower, lane, HAS_W
        )
        s1 = tl.load(prefix_wx_ptr + prefix_row + upper, mask=lane, other=0.0) - tl.load(
            prefix_wx_ptr + prefix_row + lower, mask=lane, other=0.0
        )
        s2 = tl.load(prefix_wxx_ptr + prefix_row + upper, mask=lane, other=0.0) - tl.load(
            prefix_wxx_ptr + prefix_row + lower, mask=lane, other=0.0
        )
        s0 = tl.where(lane, s0, 0.0)
        part = tl.maximum(s2 - 2.0 * c * s1 + c * c * s0, 0.0)
        inertia = tl.where(active, tl.sum(tl.where(lane, part, 0.0), axis=1), inertia)
        updated = tl.where(s0 > 0, s1 / tl.where(s0 > 0, s0, 1.0), c)
        moved = tl.sum(((updated != c) & lane).to(tl.int32), axis=1) > 0  # [BPP]
        update = active & moved & (step < max_iter)
        iterations += update.to(tl.int32)
        c = tl.where(update[:, None], updated, c)
        tl.debug_barrier()  # every lane has read its neighbours' old centroids
        tl.store(cent, c, mask=lane)
        tl.debug_barrier()  # the new centroids are visible to every lane
        active = update
        step += 1
    tl.store(inertia_ptr + block, inertia, mask=b_mask)
    tl.store(iterations_ptr + block, iterations, mask=b_mask)


@dataclass(frozen=True)
class Lloyd1dLaunch:
    """BPP blocks per program, one lane per (block, centroid)."""

    blocks_per_program: int
    num_warps: int


def lloyd_1d_launch(k: int) -> Lloyd1dLaunch:
    """Pure heuristic: at least 128 lanes per program (at K = 16, eight blocks side by side
    instead of one warp with 16 busy lanes), two lanes per thread, so every warp is full.
    (Measured with ptxas for sm_80/sm_90: one lane per thread spilled 4-8 bytes at K = 4 and
    K = 64; two lanes per thread spill nowhere.)"""
    k_pad = triton.next_power_of_2(k)
    bpp = max(1, 128 // k_pad)
    return Lloyd1dLaunch(bpp, num_warps=max(1, bpp * k_pad // 64))


def lloyd_1d(
    values: torch.Tensor,
    lengths: torch.Tensor,
    prefix_w: torch.Tensor | None,
    prefix_wx: torch.Tensor,
    prefix_wxx: torch.Tensor,
    centroids: torch.Tensor,
    max_iter: int,
    launch: Lloyd1dLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows + prefix sums + start [G, K] -> centroids [G, K] f64, inertia [G] f64,
    iterations [G] int32 (see the twin)."""
    g, w = values.shape
    k = centroids.shape[1]
    launch = launch or lloyd_1d_launch(k)
    out = centroids.to(torch.float64).contiguous().clone()
    inertia = torch.empty(g, dtype=torch.float64, device=values.device)
    iterations = torch.empty(g, dtype=torch.int32, device=values.device)
    bpp = launch.blocks_per_program
    _lloyd_1d_kernel[(triton.cdiv(g, bpp),)](
        values.contiguous(), lengths, prefix_w if prefix_w is not None else prefix_wx,
        prefix_wx, prefix_wxx, out, inertia, iterations,
        g, w, k, max(0, max_iter), max(1, w.bit_length()),
        HAS_W=prefix_w is not None, BPP=bpp, K_PAD=triton.next_power_of_2(k),
        num_warps=launch.num_warps, **LATENCY,
    )  # fmt: skip
    return out, inertia, iterations


# ---------------------------------------------------------------------------------------------
# assign_1d


@triton.jit
def _assign_1d_kernel(
    x_ptr,  # [G, N] float (any float dtype)
    mids_ptr,  # [G, K-1] float32 midpoints, rounded down (see `midpoints_float32`)
    key_to_slot_ptr,  # [65536] int32 (FAST only)
    slot_values_ptr,  # [S] float32 (FAST only)
    codes_ptr,  # [G, N] uint8
    N,
    KM1,
    LOG_K,  # binary-search steps: bit length of K - 1
    FAST: tl.constexpr,  # codes of the clustered (fast-mode rounded) values
    BLOCK_N: tl.constexpr,
):
    """code = #{k : v > mid_k} by binary lifting over the sorted midpoints (LOG_K loads
    instead of K - 1 compares). float32 compares are exact: for a float32 v and a float64
    midpoint m, v > m iff v > (the largest float32 <= m)."""
    g = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    mask = n < N
    v = tl.load(x_ptr + g * N + n, mask=mask, other=0.0).to(tl.float32)
    if FAST:
        slot = tl.load(key_to_slot_ptr + _fp16_key(v), mask=mask, other=0)
        v = tl.load(slot_values_ptr + slot, mask=mask, other=0.0)
    position = tl.zeros([BLOCK_N], tl.int32)
    mids = mids_ptr + g * KM1
    for s in range(LOG_K):
        candidate = position + (1 << (LOG_K - 1 - s))
        ok = mask & (candidate <= KM1)
        boundary = tl.load(mids + candidate - 1, mask=ok, other=float("inf"))
        position = tl.where(ok & (v > boundary), candidate, position)
    tl.store(codes_ptr + g * N + n, position.to(tl.uint8), mask=mask)


@dataclass(frozen=True)
class Assign1dLaunch:
    """BLOCK_N elements per program."""

    block_n: int
    num_warps: int


ASSIGN_1D_LAUNCH = Assign1dLaunch(1024, num_warps=4)


def assign_1d_launch(n: int) -> Assign1dLaunch:
    """Pure heuristic: 1024 elements per program (short blocks are masked: one compiled
    kernel per input dtype and mode)."""
    del n
    return ASSIGN_1D_LAUNCH


def midpoints_float32(centroids: torch.Tensor) -> torch.Tensor:
    """[G, K] ascending -> [G, K-1] float32 midpoints rounded down (twin: same name)."""
    c = centroids.to(torch.float64)
    mids = (c[:, :-1] + c[:, 1:]) * 0.5
    down = mids.to(torch.float32)
    lower = torch.nextafter(down, torch.full_like(down, float("-inf")))
    return torch.where(down.to(torch.float64) > mids, lower, down).contiguous()


def assign_1d(
    x: torch.Tensor,
    centroids: torch.Tensor,
    key_to_slot: torch.Tensor | None = None,
    slot_values: torch.Tensor | None = None,
    launch: Assign1dLaunch | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [G, N], centroids [G, K] ascending -> codes [G, N] uint8 (`out` if given); fast
    mode when the tables are given (see the twin)."""
    g, n = x.shape
    k = centroids.shape[1]
    if out is None:
        out = torch.empty((g, n), dtype=torch.uint8, device=x.device)
    if out.numel() == 0:
        return out
    launch = launch or assign_1d_launch(n)
    mids = midpoints_float32(centroids)
    fast = key_to_slot is not None
    _assign_1d_kernel[(g, triton.cdiv(n, launch.block_n))](
        x.contiguous(), mids, key_to_slot if fast else mids, slot_values if fast else mids,
        out, n, k - 1, (k - 1).bit_length(), FAST=fast, BLOCK_N=launch.block_n,
        num_warps=launch.num_warps,
    )  # fmt: skip
    return out


def variants() -> list:
    """Every configuration the scalar engine's launchers can pick."""
    from coreai_opt_gpu.kernels.variants import FLOAT_TYPES, Variant

    out = []
    size = {"fp32": 4, "fp16": 2, "bf16": 2}
    for dtype, short in FLOAT_TYPES.items():
        for kernel in (_slot_range_kernel, _count_slots_kernel):
            pointers = {"x_ptr": short, "key_to_slot_ptr": "i32", "low_ptr": "i32",
                        "high_ptr": "i32", "counts_ptr": "i32"}  # fmt: skip
            pointers = {n: t for n, t in pointers.items() if n in kernel.arg_names}
            out.append(
                Variant(kernel, f"x={dtype}", pointers, {"BLOCK": SCAN_BLOCK}, 4, size[short])
            )
    out.append(
        Variant(
            _zero_span_kernel, "", {"counts_ptr": "i32", "low_ptr": "i32", "high_ptr": "i32"},
            {"BLOCK": SCAN_BLOCK}, 4, 4, per="slot",
        )
    )  # fmt: skip
    row_pointers = {"values_ptr": "fp32", "weights_ptr": "fp64", "counts_ptr": "i32",
                    "low_ptr": "i32", "span_ptr": "i32", "slot_values_ptr": "fp32",
                    "totals_ptr": "fp64", "offsets_ptr": "fp64", "out_values_ptr": "fp32",
                    "prefix_w_ptr": "fp64", "prefix_wx_ptr": "fp64",
                    "prefix_wxx_ptr": "fp64"}  # fmt: skip
    for histogram, has_w in ((True, True), (False, False), (False, True)):
        for kernel, moved in ((_row_totals_kernel, 8), (_row_scan_kernel, 8 + 24)):
            pointers = {n: t for n, t in row_pointers.items() if n in kernel.arg_names}
            out.append(
                Variant(
                    kernel, f"HISTOGRAM={histogram} HAS_W={has_w}", pointers,
                    {"HISTOGRAM": histogram, "HAS_W": has_w, "BLOCK": SCAN_BLOCK}, 4, moved,
                    per="row entry",
                )
            )  # fmt: skip
    dp_pointers = {"values_ptr": "fp32", "lengths_ptr": "i32", "prefix_w_ptr": "fp64",
                   "prefix_wx_ptr": "fp64", "prefix_wxx_ptr": "fp64", "order_ptr": "i32",
                   "left_ptr": "i32", "right_ptr": "i32", "level_start_ptr": "i32",
                   "coarse_ptr": "fp64", "cost_ptr": "fp64", "opt_ptr": "i16",
                   "out_ptr": "fp64"}  # fmt: skip
    lloyd_pointers = {"values_ptr": "fp32", "lengths_ptr": "i32", "prefix_w_ptr": "fp64",
                      "prefix_wx_ptr": "fp64", "prefix_wxx_ptr": "fp64",
                      "centroids_ptr": "fp64", "inertia_ptr": "fp64",
                      "iterations_ptr": "i32"}  # fmt: skip
    for has_w in (False, True):
        for tile in DP_TILES:
            out.append(
                Variant(
                    _coarse_dp_start_kernel, f"HAS_W={has_w} tile={tile.rows}x{tile.cols}",
                    dp_pointers,
                    {"HAS_W": has_w, "BLOCK_E": DP_EDGES_BLOCK, "ROWS": tile.rows,
                     "COLS": tile.cols, "K_PAD": MAX_K},
                    tile.num_warps, 0, per="block (latency-bound)", options=LATENCY,
                )
            )  # fmt: skip
        for n_bits in range(0, 9):
            k = 2**n_bits
            launch = lloyd_1d_launch(k)
            out.append(
                Variant(
                    _lloyd_1d_kernel, f"K={k} HAS_W={has_w} BPP={launch.blocks_per_program}",
                    lloyd_pointers,
                    {"HAS_W": has_w, "BPP": launch.blocks_per_program,
                     "K_PAD": triton.next_power_of_2(k)},
                    launch.num_warps, 0, per="block (latency-bound)", options=LATENCY,
                )
            )  # fmt: skip
    for fast in (False, True):
        for dtype, short in FLOAT_TYPES.items():
            out.append(
                Variant(
                    _assign_1d_kernel, f"FAST={fast} x={dtype}",
                    {"x_ptr": short, "mids_ptr": "fp32", "key_to_slot_ptr": "i32",
                     "slot_values_ptr": "fp32", "codes_ptr": "u8"},
                    {"FAST": fast, "BLOCK_N": ASSIGN_1D_LAUNCH.block_n},
                    ASSIGN_1D_LAUNCH.num_warps, size[short] + 1,
                )
            )  # fmt: skip
    return out
