"""Vector (cluster_dim 2..8) k-means of many blocks at once.

Every block runs R restarts side by side (P = G * R problems, restart r of block g is problem
g * R + r): batched greedy k-means++ starts, then Lloyd steps through `ops.assign_update` (fused
assignment and member sums) until no problem improves its inertia by more than `tol`
(relative), empty clusters re-seeded with the points farthest from their centroids. Large
blocks run the restarts on a random subsample and refine the best few on all their vectors.
The restart with the lowest inertia wins per block and is polished to a tighter tolerance.
Weights are per vector or per vector component (the distance weighs each component). Random
draws come from one torch generator seeded by `seed` (or, when None, by torch's global RNG),
so results are reproducible.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from coreai_opt_gpu import ops


def _draw(weights: torch.Tensor, draws: int, generator: torch.Generator) -> torch.Tensor:
    """`draws` indices per row of weights [P, N] >= 0, each with probability proportional to
    weight -> [P, draws]."""
    cdf = weights.double().cumsum(1)
    u = torch.rand(len(cdf), draws, generator=generator, device=cdf.device, dtype=torch.float64)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_max(cdf.shape[1] - 1)


def _squared_distance(
    x: torch.Tensor, weights: torch.Tensor | None, block: torch.Tensor, point: torch.Tensor
) -> torch.Tensor:
    """Weighted squared distance of every vector of problem p's block x[block[p]] to
    point[p]: x [G, N, D], weights [G, N, D] (per component) or None, block [P],
    point [P, D] -> [P, N] float32 (components summed in order). Only [P, N] temporaries: no
    [P, N, D] copy of the data per problem."""
    out = None
    for j in range(x.shape[-1]):
        diff = x[block, :, j] - point[:, j, None]
        term = diff * diff if weights is None else diff * diff * weights[block, :, j]
        out = term if out is None else out + term
    return out


def kmeans_plus_plus(
    x: torch.Tensor,
    weights: torch.Tensor | None,
    block: torch.Tensor,
    k: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Greedy k-means++ starts for P problems: x [G, N, D], weights [G, N, D] (per
    component) or None, block [P] (the block each problem clusters) -> centroids [P, K, D] f32.

    The first centroid is drawn with probability proportional to a vector's total weight;
    each next one is the best (lowest resulting potential) of 2 + ln K candidates drawn with
    probability proportional to the weighted squared distance to the chosen ones. Candidates
    are scored one at a time, so the working memory is a few [P, N] arrays.
    """
    p, d = len(block), x.shape[-1]
    candidates = 2 + int(math.log(k))
    rows = torch.arange(p, device=x.device)
    if weights is None:
        first = torch.ones((p, x.shape[1]), device=x.device)
    else:
        first = weights.sum(-1)[block]  # [P, N]
    centroids = torch.empty((p, k, d), dtype=torch.float32, device=x.device)
    centroids[:, 0] = x[block, _draw(first, 1, generator)[:, 0]]
    nearest = _squared_distance(x, weights, block, centroids[:, 0])  # [P, N]
    for j in range(1, k):
        picks = x[block[:, None], _draw(nearest, candidates, generator)]  # [P, L, D]
        best, choice = None, torch.zeros(p, dtype=torch.int64, device=x.device)
        for candidate in range(candidates):
            distance = _squared_distance(x, weights, block, picks[:, candidate])
            potential = torch.minimum(nearest, distance).sum(1)  # [P]
            if best is None:
                best = potential
            else:  # strictly lower: the first best candidate wins, as argmin
                better = potential < best
                best = torch.where(better, potential, best)
                choice = torch.where(better, candidate, choice)
        centroids[:, j] = picks[rows, choice]
        nearest = torch.minimum(nearest, _squared_distance(x, weights, block, centroids[:, j]))
    return centroids


def _reseed_empty(
    centroids: torch.Tensor,
    counts: torch.Tensor,
    distances: torch.Tensor,
    x: torch.Tensor,
    block: torch.Tensor,
) -> torch.Tensor:
    """Empty clusters (no member weight, counts [P, K, D]) take the points farthest from
    their centroids (distinct per problem); problem p's points are x[block[p]]."""
    empty = counts.sum(-1) <= 0  # [P, K]
    if not bool(empty.any()):
        return centroids
    n = distances.shape[1]
    k = centroids.shape[1]
    farthest = distances.topk(min(k, n), dim=1).indices  # [P, min(K, N)]
    rank = (empty.cumsum(1) - 1).clamp(0, farthest.shape[1] - 1)
    points = torch.gather(farthest, 1, rank)  # [P, K]
    return torch.where(empty[..., None], x[block[:, None], points], centroids)


def _sorted_lut(lut: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block: used centroids first in lexicographic order, unused ones after them set to
    the last used centroid (LUT padding); codes renumbered to match."""
    p, k, d = lut.shape
    used = torch.zeros((p, k), dtype=torch.bool, device=lut.device)
    used.scatter_(1, codes.long(), True)
    order = torch.arange(k, device=lut.device).expand(p, k)
    keys = [lut[..., j] for j in reversed(range(d))] + [(~used).to(lut.dtype)]
    for key in keys:  # stable sorts, least significant key first
        order = torch.gather(order, 1, torch.gather(key, 1, order).argsort(dim=1, stable=True))
    rank = order.argsort(dim=1)  # old code -> new code
    ordered = torch.gather(lut, 1, order[..., None].expand_as(lut))
    last = (used.sum(1) - 1).clamp_min(0)  # [P]: position of the last used centroid
    last_centroid = torch.gather(ordered, 1, last[:, None, None].expand(-1, 1, d))
    padded = torch.arange(k, device=lut.device)[None, :] > last[:, None]
    ordered = torch.where(padded[..., None], last_centroid, ordered)
    return ordered, torch.gather(rank, 1, codes.long()).to(torch.uint8)


def lloyd(
    x: torch.Tensor,
    weights: torch.Tensor | None,
    centroids: torch.Tensor,
    max_iter: int,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd steps for P problems on blocks x [G, N, D] (weights [G, N, D] per component or
    None) from centroids [P, K, D]; each
    problem stops once it no longer improves its inertia by more than `tol` (relative) and
    keeps that assignment, so later steps only run the problems still moving (measured: the
    slowest of 128 restarts took ~120 steps where most settle within a few dozen). Returns
    centroids, codes [P, N] and inertia [P] (float64) of the final assignments."""
    g, n, _ = x.shape
    p = len(centroids)
    block = torch.arange(p, device=x.device) // (p // g)
    centroids = centroids.clone()
    codes = torch.empty((p, n), dtype=torch.uint8, device=x.device)
    inertia = torch.empty(p, dtype=torch.float64, device=x.device)
    previous = torch.full((p,), float("inf"), dtype=torch.float64, device=x.device)
    active = torch.arange(p, device=x.device)
    for _ in range(max_iter + 1):
        rows = block[active]
        whole = len(active) == p  # every problem: the op maps problems to blocks itself
        data = x if whole else x[rows]
        w = None if weights is None else (weights if whole else weights[rows])
        step_codes, distances, sums, counts = ops.assign_update(data, centroids[active], w)
        step_inertia = distances.double().sum(1)  # distances are weighted already
        codes[active], inertia[active] = step_codes, step_inertia
        settled = previous[active] <= step_inertia * (1 + tol)
        if bool(settled.all()):
            break
        previous[active] = torch.minimum(previous[active], step_inertia)
        means = (sums / counts.clamp_min(1e-300)).float()  # per component
        updated = torch.where(counts > 0, means, centroids[active])
        moving = ~settled
        updated = _reseed_empty(updated, counts, distances, x, rows)
        centroids[active[moving]] = updated[moving]
        active = active[moving]
    return centroids, codes, inertia


def _best_per_block(inertia: torch.Tensor, g: int, keep: int) -> torch.Tensor:
    """Problem indices of the `keep` lowest-inertia restarts of each block, [G * keep]."""
    per_block = inertia.view(g, -1)
    best = per_block.topk(keep, dim=1, largest=False).indices  # [G, keep]
    return (best + torch.arange(g, device=inertia.device)[:, None] * per_block.shape[1]).ravel()


# Blocks are clustered in groups of at most this many (restart, vector) pairs, so the working
# memory is a few [P, N] float32 arrays of ~4 MiB whatever the layer (measured before: a
# 1024x1024 cluster_dim 2 layer grouped by 16 rows, 512 problems at once, took +406 MiB).
PROBLEM_ELEMENTS = 1 << 20


def cluster_vector(
    x: torch.Tensor,
    k: int,
    weights: torch.Tensor | None = None,
    *,
    restarts: int = 8,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int | None = None,
    subsample: int = 32768,
    refine: int = 4,
    polish_tol: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [G, N, D] float32 -> LUT [G, K, D] float32, codes [G, N] uint8, inertia [G] f64.

    weights: [G, N] per vector (sample weights) or [G, N, D] per component (the inertia is
    sum_n sum_d w[n, d] (x[n, d] - c[n, d])^2), or None.

    Restarts run on a random subsample of `subsample` vectors per block (all of them when
    the block is smaller); the `refine` best continue on the whole block, and the lowest
    full-block inertia wins; the winner then runs on until it improves by no more than
    `polish_tol` (default tol / 10). Measured on a 1024x1024 layer (4 bits, 524,288 vectors),
    16 seeds, inertia over coreai_opt's: 8 restarts on 16K vectors refining 2, no polish,
    ranged 0.9994-1.0064 (0.43 s); these defaults 0.9992-1.0013 (0.75 s on average;
    coreai_opt 22 s).

    LUT rows: used centroids in lexicographic order, then (a block with fewer distinct
    vectors than K) the last one repeated. Blocks go in groups of
    `PROBLEM_ELEMENTS` (restart, vector) pairs, fixed by the shapes, so results depend on the
    seed and the blocks alone.
    """
    g, n, d = x.shape
    if weights is not None and weights.dim() == 2:  # per vector: the same for each component
        weights = weights[..., None].expand(g, n, d)
    if weights is not None:
        weights = weights.to(torch.float32).contiguous()
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    generator = torch.Generator(device=x.device).manual_seed(seed)
    per_group = max(1, PROBLEM_ELEMENTS // (restarts * min(n, subsample)))
    with one_torch_thread_on_host(x.device):  # groups of blocks, one generator drawn in order
        parts = [
            _cluster_group(
                x[i : i + per_group],
                k,
                None if weights is None else weights[i : i + per_group],
                restarts,
                max_iter,
                tol,
                generator,
                subsample,
                refine,
                polish_tol,
            )
            for i in range(0, g, per_group)
        ]
    if len(parts) == 1:
        return parts[0]
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))  # type: ignore[return-value]


_THREADS_LOCK = threading.Lock()
_threads_owner: list[int | None] = [None]  # the thread whose call set one torch thread


@contextmanager
def one_torch_thread_on_host(device: torch.device) -> Iterator[None]:
    """Run torch's CPU ops on one intra-op thread meanwhile, when the blocks are on the host.
    The host Lloyd loop is many small torch ops around the single-threaded C step: on the
    2-core VM beside two busy processes, a 1024x1024 layer took 1.9-8.3 s with torch's two
    threads (spin-waiting on each other) and 0.8-1.2 s with one, and idle the same with
    either (0.53-0.73 s).

    Only a call that finds no other inside sets the count, and it restores what it found when
    it leaves; calls overlapping it from other threads leave the count alone. So the count
    comes back right whether torch keeps it per thread (OpenMP after a thread's first use)
    or process-wide: a second call saving the first's 1 and restoring it last would leave 1.
    """
    if device.type != "cpu":
        yield
        return
    with _THREADS_LOCK:
        mine = _threads_owner[0] is None
        if mine:
            saved = torch.get_num_threads()
            torch.set_num_threads(1)
            _threads_owner[0] = threading.get_ident()
    try:
        yield
    finally:
        if mine:
            with _THREADS_LOCK:
                torch.set_num_threads(saved)
                _threads_owner[0] = None


def _cluster_group(
    x: torch.Tensor,
    k: int,
    weights: torch.Tensor | None,
    restarts: int,
    max_iter: int,
    tol: float,
    generator: torch.Generator,
    subsample: int,
    refine: int,
    polish_tol: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`cluster_vector` of one group of blocks, drawing from `generator`."""
    g, n, _ = x.shape
    sample = None
    if n > subsample:
        sample = torch.randperm(n, generator=generator, device=x.device)[:subsample].sort().values
    xs = x if sample is None else x[:, sample].contiguous()
    ws = weights if weights is None or sample is None else weights[:, sample].contiguous()
    block = torch.arange(g * restarts, device=x.device) // restarts
    starts = kmeans_plus_plus(xs, ws, block, k, generator)
    centroids, codes, inertia = lloyd(xs, ws, starts, max_iter, tol)
    if sample is not None:
        keep = min(refine, restarts)
        centroids = centroids[_best_per_block(inertia, g, keep)]
        centroids, codes, inertia = lloyd(x, weights, centroids, max_iter, tol)
    best = _best_per_block(inertia, g, 1)
    polish = tol / 10 if polish_tol is None else polish_tol
    lut, codes, inertia = lloyd(x, weights, centroids[best], max_iter, polish)
    lut, codes = _sorted_lut(lut, codes)
    return lut, codes, inertia
