"""Vector (cluster_dim 2..8) k-means of many blocks at once.

Every block runs R restarts side by side (P = G * R problems, restart r of block g is problem
g * R + r): batched greedy k-means++ starts, then Lloyd steps through `ops.assign_update` (fused
assignment and member sums) until no problem improves its inertia by more than `tol`
(relative), empty clusters re-seeded with the points farthest from their centroids. Large
blocks run the restarts on a random subsample and refine the best few on all their vectors.
The restart with the lowest inertia wins per block. Random draws come from one torch generator
seeded by `seed` (or, when None, by torch's global RNG), so results are reproducible.
"""

from __future__ import annotations

import math

import torch

from coreai_opt_gpu import ops


def _draw(weights: torch.Tensor, draws: int, generator: torch.Generator) -> torch.Tensor:
    """`draws` indices per row of weights [P, N] >= 0, each with probability proportional to
    weight -> [P, draws]."""
    cdf = weights.double().cumsum(1)
    u = torch.rand(len(cdf), draws, generator=generator, device=cdf.device, dtype=torch.float64)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_max(cdf.shape[1] - 1)


def kmeans_plus_plus(
    data: torch.Tensor, weights: torch.Tensor, k: int, generator: torch.Generator
) -> torch.Tensor:
    """Greedy k-means++ starts: data [P, N, D], weights [P, N] -> centroids [P, K, D] f32.

    Each new centroid is the best (lowest resulting potential) of 2 + ln K candidates drawn
    with probability proportional to weight times squared distance to the chosen ones.
    """
    p, _, d = data.shape
    candidates = 2 + int(math.log(k))
    rows = torch.arange(p, device=data.device)
    centroids = torch.empty((p, k, d), dtype=torch.float32, device=data.device)
    centroids[:, 0] = data[rows, _draw(weights, 1, generator)[:, 0]]
    nearest = ((data - centroids[:, :1]) ** 2).sum(-1)  # [P, N]
    for j in range(1, k):
        picks = data[rows[:, None], _draw(weights * nearest, candidates, generator)]  # [P, L, D]
        trial = torch.minimum(nearest[:, None], ((data[:, None] - picks[:, :, None]) ** 2).sum(-1))
        choice = (weights[:, None] * trial).sum(-1).argmin(1)  # [P]
        centroids[:, j] = picks[rows, choice]
        nearest = trial[rows, choice]
    return centroids


def _reseed_empty(
    centroids: torch.Tensor, counts: torch.Tensor, distances: torch.Tensor, data: torch.Tensor
) -> torch.Tensor:
    """Empty clusters take the points farthest from their centroids (distinct per problem)."""
    empty = counts <= 0  # [P, K]
    if not bool(empty.any()):
        return centroids
    p, n = distances.shape
    k = centroids.shape[1]
    farthest = distances.topk(min(k, n), dim=1).indices  # [P, min(K, N)]
    rank = (empty.cumsum(1) - 1).clamp(0, farthest.shape[1] - 1)
    points = torch.gather(farthest, 1, rank)  # [P, K]
    rows = torch.arange(p, device=data.device)[:, None]
    return torch.where(empty[..., None], data[rows, points], centroids)


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
    """Lloyd steps for P problems on blocks x [G, N, D] from centroids [P, K, D] until no
    problem improves its inertia by more than `tol` (relative). Returns centroids, codes
    [P, N] and inertia [P] (float64) of the final assignment."""
    g, n, _ = x.shape
    block = torch.arange(len(centroids), device=x.device) // (len(centroids) // g)
    data = x[block]  # [P, N, D]
    w = (torch.ones((g, n), device=x.device) if weights is None else weights.float())[block]
    previous = torch.full((len(centroids),), float("inf"), dtype=torch.float64, device=x.device)
    for _ in range(max_iter + 1):
        codes, distances, sums, counts = ops.assign_update(x, centroids, weights)
        inertia = (w.double() * distances.double()).sum(1)
        if bool((previous <= inertia * (1 + tol)).all()):
            break
        previous = torch.minimum(previous, inertia)
        means = (sums / counts.clamp_min(1e-300)[..., None]).float()
        updated = torch.where(counts[..., None] > 0, means, centroids)
        centroids = _reseed_empty(updated, counts, distances, data)
    return centroids, codes, inertia


def _best_per_block(inertia: torch.Tensor, g: int, keep: int) -> torch.Tensor:
    """Problem indices of the `keep` lowest-inertia restarts of each block, [G * keep]."""
    per_block = inertia.view(g, -1)
    best = per_block.topk(keep, dim=1, largest=False).indices  # [G, keep]
    return (best + torch.arange(g, device=inertia.device)[:, None] * per_block.shape[1]).ravel()


def cluster_vector(
    x: torch.Tensor,
    k: int,
    weights: torch.Tensor | None = None,
    *,
    restarts: int = 8,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int | None = None,
    subsample: int = 16384,
    refine: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [G, N, D] float32 -> LUT [G, K, D] float32, codes [G, N] uint8, inertia [G] f64.

    Restarts run on a random subsample of `subsample` vectors per block (all of them when
    the block is smaller); the `refine` best continue on the whole block, and the lowest
    full-block inertia wins. LUT rows: used centroids in lexicographic order, then (a block
    with fewer distinct vectors than K) the last one repeated.
    """
    g, n, _ = x.shape
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    generator = torch.Generator(device=x.device).manual_seed(seed)
    sample = None
    if n > subsample:
        sample = torch.randperm(n, generator=generator, device=x.device)[:subsample].sort().values
    xs = x if sample is None else x[:, sample].contiguous()
    ws = weights if weights is None or sample is None else weights[:, sample].contiguous()
    block = torch.arange(g * restarts, device=x.device) // restarts
    ws_full = torch.ones(xs.shape[:2], device=x.device) if ws is None else ws.float()
    starts = kmeans_plus_plus(xs[block], ws_full[block], k, generator)
    centroids, codes, inertia = lloyd(xs, ws, starts, max_iter, tol)
    if sample is not None:
        keep = min(refine, restarts)
        centroids = centroids[_best_per_block(inertia, g, keep)]
        centroids, codes, inertia = lloyd(x, weights, centroids, max_iter, tol)
    best = _best_per_block(inertia, g, 1)
    lut, codes, inertia = centroids[best], codes[best], inertia[best]
    lut, codes = _sorted_lut(lut, codes)
    return lut, codes, inertia
