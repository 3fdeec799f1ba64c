"""Scalar k-means building blocks: numpy twins of the Triton kernels in `kernels/kmeans_1d.py`.

Each block becomes a *row*: ascending values [G, W] float32 of which the first `lengths[g]`
are valid, with prefix sums of w, w*x and w*x^2 ([G, W+1] float64, a leading 0; the weight
prefix is omitted for unit weights, where it is the index itself). From prefix sums, one Lloyd
iteration costs O(K log W) per block and a run's squared error is S2 - 2 c S1 + c^2 S0.

- `grid_histogram`: fast mode, where every value is first mapped to its slot in a table of
  the distinct rounded fp16 values (`engine.fast_mode`): per-block slot range and counts.
- `histogram_rows`: counts -> rows of the occupied slots with prefix sums (compacted).
- `prefix_sums`: sorted rows (exact mode, or weighted) -> prefix sums.
- `coarse_dp_start`: the exact k-means of each row coarsened to `bins` runs (the start).
- `lloyd_1d`: Lloyd to convergence; centroids, inertia and the number of updates.
- `assign_1d`: nearest-centroid codes by a binary search over float32 midpoints.

Exactness contract shared with the kernels: integer outputs (slots, counts, edges, codes,
iteration counts) and, given the same prefix sums, centroids are equal bit for bit; prefix
sums and inertia are reductions whose order differs (normalized error).
"""

from __future__ import annotations

import numpy as np

from coreai_opt_gpu.reference.kmeans_1d_exact import kmeans_1d_dp

FP16_KEYS = 1 << 16


def _ordered_keys(x: np.ndarray) -> np.ndarray:
    """float32 -> uint64 keys with the same order (-0.0 folded into +0.0)."""
    bits = (x.astype(np.float32) + np.float32(0.0)).view(np.uint32)
    flipped = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))
    return flipped.astype(np.uint64)


def round_down_to_float32(x: np.ndarray) -> np.ndarray:
    """Largest float32 <= x (float64): for float32 v, v <= x iff v <= round_down(x), and
    v > x iff v > round_down(x)."""
    down = x.astype(np.float32)
    return np.where(down.astype(np.float64) > x, np.nextafter(down, np.float32(-np.inf)), down)


class SortedRows:
    """Rows [G, M] of sorted float32, searchable per row with one flat np.searchsorted.

    Rows are concatenated under exact keys (row << 32 | order-preserving float bits), built
    once so that repeated searches cost O(log(G M)) each.
    """

    def __init__(self, rows: np.ndarray) -> None:
        self.shape = rows.shape
        self._offset = np.arange(rows.shape[0], dtype=np.uint64)[:, None] << np.uint64(32)
        self._flat = (self._offset | _ordered_keys(rows)).ravel()

    def search(self, values: np.ndarray, side: str = "left") -> np.ndarray:
        """values [G, Q] float32 -> per-row insertion points [G, Q] int64."""
        keys = (self._offset | _ordered_keys(values)).ravel()
        found = np.searchsorted(self._flat, keys, side=side).reshape(values.shape)
        return found.astype(np.int64) - np.arange(self.shape[0])[:, None] * self.shape[1]

    def count_at_most(self, bounds: np.ndarray) -> np.ndarray:
        """bounds [G, Q] float64 -> per row, how many values are <= each bound."""
        return self.search(round_down_to_float32(bounds), "right")


def batched_searchsorted(rows: np.ndarray, values: np.ndarray, side: str = "left") -> np.ndarray:
    """Per-row np.searchsorted: rows [G, M] sorted float32, values [G, Q] -> [G, Q] int64."""
    return SortedRows(rows).search(values, side)


def fp16_keys(x: np.ndarray) -> np.ndarray:
    """Order-preserving 16-bit keys of fp16(x) (round to nearest even), as uint16: keys rise
    with the value; -0.0 is key 0x7FFF and +0.0 is 0x8000."""
    bits = x.astype(np.float16).view(np.uint16)
    flip = np.where(bits >= 0x8000, np.uint16(0xFFFF), np.uint16(0x8000))
    return bits ^ flip


def _bits_to_slot(key_to_slot: np.ndarray) -> np.ndarray:
    """[65536] slot of each fp16 bit pattern (the key table re-indexed by the raw bits)."""
    bits = np.arange(FP16_KEYS, dtype=np.uint16)
    return key_to_slot[bits ^ np.where(bits >= 0x8000, 0xFFFF, 0x8000).astype(np.uint16)]


def _slots(x: np.ndarray, key_to_slot: np.ndarray) -> np.ndarray:
    """Slot of every element: one gather through a table indexed by the fp16 bits."""
    return _bits_to_slot(key_to_slot)[x.astype(np.float16).view(np.uint16)]


PER_BLOCK = 1 << 14  # blocks at least this long are counted one at a time over fp16 patterns


def grid_histogram(
    x: np.ndarray, key_to_slot: np.ndarray, n_slots: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fast-mode histogram of each block of x [G, N] over value slots.

    key_to_slot [65536] int32 maps each fp16 key to the slot of its rounded value (slots rise
    with the value, n_slots in all). Returns counts [G, W] int32 (entry j of block g counts
    slot low[g] + j; valid for j < span[g]; the kernel's W is n_slots, the twin's the widest
    span), low [G] int32 and span [G] int32 (slots from the block's lowest to its highest).
    Long blocks are counted over their fp16 bit patterns first (a 65,536-bin bincount that
    stays in cache), then pattern counts are summed into slots: no per-element slot array.
    """
    g, n = x.shape
    if n < PER_BLOCK:
        slots = _slots(x, key_to_slot)  # [G, N] int32
        low, high = slots.min(1), slots.max(1)
        span = high - low + 1
        width = int(span.max())
        flat = (slots - low[:, None]).astype(np.int64) + np.arange(g)[:, None] * width
        counts = np.bincount(flat.ravel(), minlength=g * width).reshape(g, width)
        return counts.astype(np.int32), low.astype(np.int32), span.astype(np.int32)
    bits_to_slot = _bits_to_slot(key_to_slot)
    bits = x.astype(np.float16).view(np.uint16)
    per_block = []
    for row in bits:
        pattern_counts = np.bincount(row, minlength=FP16_KEYS)
        slot_counts = np.bincount(bits_to_slot, weights=pattern_counts, minlength=n_slots)
        used = np.flatnonzero(slot_counts)
        per_block.append((used[0], slot_counts[used[0] : used[-1] + 1]))
    low = np.array([lo for lo, _ in per_block], np.int32)
    span = np.array([len(c) for _, c in per_block], np.int32)
    counts = np.zeros((g, int(span.max())), np.int32)
    for row, (_, c) in zip(counts, per_block, strict=True):
        row[: len(c)] = c
    return counts, low, span


def _prefix(x: np.ndarray) -> np.ndarray:
    """[G, M] -> running sums [G, M+1] float64 with a leading 0 (written in place: numpy's
    cumsum into a fresh array along axis 1 is ten times slower)."""
    out = np.empty((x.shape[0], x.shape[1] + 1))
    out[:, 0] = 0.0
    np.cumsum(x, axis=1, out=out[:, 1:])
    return out


def histogram_rows(
    counts: np.ndarray, low: np.ndarray, span: np.ndarray, slot_values: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the occupied slots of each histogram, in ascending order, with prefix sums.

    counts [G, >= max span] int, low/span [G] (from `grid_histogram`), slot_values [S]
    float32 ascending; `width` >= every block's number of occupied slots. Returns values
    [G, width] float32, lengths [G] int32 (occupied slots), and prefix sums of the counts,
    counts * value and counts * value^2, [G, width + 1] float64 each. Entries past a row's
    length are unspecified, and the twin returns only as many columns as its longest row.
    """
    g, cols = counts.shape
    cnt = np.where(np.arange(cols)[None, :] < span[:, None], counts, 0).astype(np.float64)
    occupied = cnt > 0
    lengths = occupied.sum(1)
    width = int(min(width, lengths.max()))
    where_g, where_col = np.nonzero(occupied)
    position = (np.cumsum(occupied, 1) - 1)[where_g, where_col]  # compacted column
    taken = np.zeros((g, width))
    taken[where_g, position] = cnt[where_g, where_col]  # zero past each length
    values = np.full((g, width), -np.inf, np.float32)
    values[where_g, position] = slot_values[low[where_g] + where_col]
    values = np.maximum.accumulate(values, axis=1)  # past the length: the last value
    v = values.astype(np.float64)
    wx = taken * v
    prefix = [_prefix(a) for a in (taken, wx, wx * v)]
    return values, lengths.astype(np.int32), *prefix  # type: ignore[return-value]


def prefix_sums(
    values: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Sorted rows [G, M] float32 (and weights [G, M] or None: unit weights) -> prefix sums
    of w (None for unit weights), w*x and w*x^2, each [G, M+1] float64 with a leading 0."""
    x = values.astype(np.float64)
    if weights is None:
        return None, _prefix(x), _prefix(x * x)
    w = weights.astype(np.float64)
    wx = w * x
    return _prefix(w), _prefix(wx), _prefix(wx * x)


def _prefix_at(prefix_w: np.ndarray | None, index: np.ndarray) -> np.ndarray:
    """Weight prefix at `index` [G, Q] (the index itself for unit weights)."""
    if prefix_w is None:
        return index.astype(np.float64)
    return np.take_along_axis(prefix_w, index, 1)


def coarse_edges(
    values: np.ndarray, lengths: np.ndarray, prefix_w: np.ndarray | None, bins: int
) -> np.ndarray:
    """Bin edges [G, bins + 1] (ascending, from 0 to the row length) of each row.

    A row of at most `bins` entries gets one bin per entry (then empty bins). Longer rows are
    cut where the mixed score u(j) = (P_w[j+1] / P_w[m]) / 2 + ((v_j - v_0) / (v_m-1 - v_0)) / 2
    crosses c / bins: every bin holds at most 2 / bins of the weight and of the value range, so
    the mass and the tails (where outliers want a centroid of their own) both get resolution.
    Edge c = #{j < m : u(j) <= c / bins}.
    """
    g, w = values.shape
    m = lengths.astype(np.int64)[:, None]  # [G, 1]
    rows = np.arange(g)[:, None]
    v = values.astype(np.float64)
    total = _prefix_at(prefix_w, m)
    total = np.where(total > 0, total, 1.0)
    low = v[:, :1]
    spread = v[rows, np.maximum(m - 1, 0)] - low
    spread = np.where(spread > 0, spread, 1.0)
    target = np.arange(bins + 1)[None, :] / bins  # [1, bins + 1]
    lo = np.zeros((g, bins + 1), np.int64)
    hi = np.broadcast_to(m, lo.shape).copy()
    for _ in range(max(1, w.bit_length())):  # the kernel's binary search, all edges at once
        active = lo < hi
        mid = (lo + hi) // 2
        mass = _prefix_at(prefix_w, np.minimum(mid + 1, m)) / total
        u = 0.5 * mass + 0.5 * ((v[rows, np.minimum(mid, w - 1)] - low) / spread)
        right = u <= target
        lo = np.where(active & right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
    edges = lo
    edges[:, 0] = 0
    edges[:, -1] = m[:, 0]
    simple = np.minimum(np.arange(bins + 1)[None, :], m)
    return np.where(m <= bins, simple, edges)


def coarse_dp_start(
    values: np.ndarray,
    lengths: np.ndarray,
    prefix_w: np.ndarray | None,
    prefix_wx: np.ndarray,
    prefix_wxx: np.ndarray,
    k: int,
    bins: int,
) -> np.ndarray:
    """Exact k-means of each row coarsened to `bins` runs (`coarse_edges`) -> centroids
    [G, K] float64 ascending: the optimal split at bin edges under the rows' own squared error
    (prefix sums at the edges), unused centroids repeating the last one.

    When every row is shorter than `bins`, the twin solves the DP over the longest row's
    length instead: rows that short get one bin per entry and then empty bins, whose runs cost
    nothing and whose prefix sums repeat the totals, so the leftmost argmins and the result
    are the same (the kernel cannot know the lengths without reading them back)."""
    bins = int(min(bins, max(1, lengths.max())))
    edges = coarse_edges(values, lengths, prefix_w, bins)
    sums = (
        _prefix_at(prefix_w, edges),
        np.take_along_axis(prefix_wx, edges, 1),
        np.take_along_axis(prefix_wxx, edges, 1),
    )
    return kmeans_1d_dp(*sums, k)[0]


def _padded(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Entries past each row's length become +inf, so searches never count them."""
    past = np.arange(values.shape[1])[None, :] >= lengths[:, None]
    return np.where(past, np.float32(np.inf), values.astype(np.float32))


def lloyd_1d(
    values: np.ndarray,
    lengths: np.ndarray,
    prefix_w: np.ndarray | None,
    prefix_wx: np.ndarray,
    prefix_wxx: np.ndarray,
    centroids: np.ndarray,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lloyd iterations on rows until no centroid moves, at most max_iter updates.

    values [G, W] ascending float32 with lengths [G]; prefix sums [G, W+1] float64
    (prefix_w None: unit weights); centroids [G, K] ascending float64 (the start). Each pass
    finds the boundaries b_k = #{x <= (c_k-1 + c_k) / 2} of the current centroids, their
    inertia sum_k max(S2 - 2 c_k S1 + c_k^2 S0, 0), then (unless it is the last pass) the
    update c_k <- S1 / S0 (kept where S0 = 0). Returns centroids [G, K] float64, inertia [G]
    float64 of those centroids and the number of updates that moved a block [G] int32.
    """
    g = values.shape[0]
    rows = SortedRows(_padded(values, lengths))
    c = centroids.astype(np.float64).copy()
    iterations = np.zeros(g, np.int32)
    ends = np.zeros((g, 1), np.int64), lengths.astype(np.int64)[:, None]
    inertia = np.zeros(g)
    for step in range(max_iter + 1):
        mids = (c[:, :-1] + c[:, 1:]) * 0.5
        bounds = np.concatenate([ends[0], rows.count_at_most(mids), ends[1]], 1)
        s0 = np.diff(_prefix_at(prefix_w, bounds), axis=1)
        s1 = np.diff(np.take_along_axis(prefix_wx, bounds, 1), axis=1)
        s2 = np.diff(np.take_along_axis(prefix_wxx, bounds, 1), axis=1)
        inertia = np.maximum(s2 - 2.0 * c * s1 + c * c * s0, 0.0).sum(1)
        if step == max_iter:
            break
        updated = np.where(s0 > 0, s1 / np.where(s0 > 0, s0, 1.0), c)
        moved = (updated != c).any(1)
        if not moved.any():
            break
        iterations += moved
        c = updated
    return c, inertia, iterations


def midpoints_float32(centroids: np.ndarray) -> np.ndarray:
    """[G, K] ascending -> decision boundaries [G, K-1] rounded down to float32: for a
    float32 x, x > (c_k + c_k+1) / 2 in float64 exactly when x > the rounded boundary."""
    c = centroids.astype(np.float64)
    return round_down_to_float32((c[:, :-1] + c[:, 1:]) * 0.5)


def assign_1d(
    x: np.ndarray,
    centroids: np.ndarray,
    key_to_slot: np.ndarray | None = None,
    slot_values: np.ndarray | None = None,
) -> np.ndarray:
    """Nearest-centroid codes: x [G, N] float, centroids [G, K] ascending -> [G, N] uint8.

    code = #{k : v > (c_k + c_k+1) / 2} (ties go to the lower code), with v = x, or in fast
    mode (tables given) v = slot_values[key_to_slot[fp16 key of x]], the clustered value.
    """
    mids = midpoints_float32(centroids)  # [G, K-1]
    if x.size == 0:
        return np.zeros(x.shape, np.uint8)
    if key_to_slot is not None and x.shape[1] >= PER_BLOCK:
        return _assign_fast_per_block(x, mids, key_to_slot, slot_values)
    if key_to_slot is not None:
        slots = _slots(x, key_to_slot)
        low = slots.min(1, keepdims=True)
        span = int((slots.max(1, keepdims=True) - low).max()) + 1
        grid = np.minimum(low + np.arange(span)[None, :], len(slot_values) - 1)
        table = SortedRows(mids).search(slot_values[grid], "left").astype(np.uint8)
        return np.take_along_axis(table, (slots - low).astype(np.intp), 1)
    return SortedRows(mids).search(x.astype(np.float32), "left").astype(np.uint8)


def _assign_fast_per_block(
    x: np.ndarray, mids: np.ndarray, key_to_slot: np.ndarray, slot_values: np.ndarray
) -> np.ndarray:
    """Fast-mode codes of long blocks: per block, the code of each of the block's slots, then
    of each fp16 bit pattern, then one cache-resident gather per element."""
    bits_to_slot = _bits_to_slot(key_to_slot)
    bits = x.astype(np.float16).view(np.uint16)
    codes = np.empty(x.shape, np.uint8)
    keys = bits ^ np.where(bits >= 0x8000, np.uint16(0xFFFF), np.uint16(0x8000))
    low_keys, high_keys = keys.min(1), keys.max(1)  # slots rise with keys
    for g, row in enumerate(bits):
        low, high = int(key_to_slot[low_keys[g]]), int(key_to_slot[high_keys[g]])
        code_of_slot = np.searchsorted(mids[g], slot_values[low : high + 1], "left")
        code_of_bits = code_of_slot[np.clip(bits_to_slot - low, 0, high - low)].astype(np.uint8)
        codes[g] = code_of_bits[row]
    return codes
