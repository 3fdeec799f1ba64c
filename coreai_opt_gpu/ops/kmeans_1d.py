"""Scalar k-means ops of the engine: Triton on CUDA tensors, numpy twins elsewhere."""

from __future__ import annotations

import torch

from coreai_opt_gpu import reference
from coreai_opt_gpu.backend import Backend, choose_backend


def _numpy(x: torch.Tensor):
    return x.detach().cpu().numpy()


def lloyd_1d(
    values: torch.Tensor,
    prefix_w: torch.Tensor,
    prefix_wx: torch.Tensor,
    centroids: torch.Tensor,
    max_iter: int,
) -> torch.Tensor:
    """Lloyd on sorted rows: values [G, M] f32, prefix sums [G, M+1] f64, start [G, K] ->
    centroids [G, K] f64 (see `reference.lloyd_1d`)."""
    if choose_backend(values) == Backend.TRITON:
        from coreai_opt_gpu.kernels.kmeans_1d import lloyd_1d as triton_lloyd_1d

        return triton_lloyd_1d(values, prefix_w, prefix_wx, centroids, max_iter)
    arrays = (_numpy(t) for t in (values, prefix_w, prefix_wx, centroids))
    return torch.from_numpy(reference.lloyd_1d(*arrays, max_iter)).to(values.device)


def assign_1d(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid codes: x [G, N] f32, centroids [G, K] ascending -> [G, N] uint8."""
    if choose_backend(x) == Backend.TRITON:
        from coreai_opt_gpu.kernels.kmeans_1d import assign_1d as triton_assign_1d

        return triton_assign_1d(x, centroids)
    codes = reference.assign_1d(_numpy(x.float()), _numpy(centroids.double()))
    return torch.from_numpy(codes).to(x.device)
