"""Vector k-means step of the engine: Triton on CUDA tensors, numpy twin elsewhere."""

from __future__ import annotations

import torch

from coreai_opt_gpu import reference
from coreai_opt_gpu.backend import Backend, choose_backend


def assign_update(
    x: torch.Tensor, centroids: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [G, N, D], centroids [P, K, D] (P = G * restarts), weights [G, N, D] (per
    component) or None -> codes [P, N] uint8, weighted squared distances [P, N] f32, member
    sums [P, K, D] f64, counts [P, K, D] f64 (member weight per component)."""
    if choose_backend(x) == Backend.TRITON:
        from coreai_opt_gpu.kernels.kmeans_vector import assign_update as triton_assign_update

        return triton_assign_update(x, centroids, weights)
    arrays = [t.detach().cpu().numpy() for t in (x.float(), centroids.float())]
    w = None if weights is None else weights.detach().float().cpu().numpy()
    results = reference.assign_update(*arrays, w)
    return tuple(torch.from_numpy(r).to(x.device) for r in results)  # type: ignore[return-value]
