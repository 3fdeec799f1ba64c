"""Tensor ops: validate inputs, pick Triton or numpy (see `coreai_opt_gpu.backend`)."""

from coreai_opt_gpu.ops.fake_quantize import fake_quantize
from coreai_opt_gpu.ops.kmeans_1d import (
    assign_1d,
    coarse_dp_start,
    grid_histogram,
    histogram_rows,
    lloyd_1d,
    prefix_sums,
)
from coreai_opt_gpu.ops.kmeans_vector import assign_update
from coreai_opt_gpu.ops.lut_dequant import lut_dequant, lut_dequant_packed

__all__ = [
    "assign_1d",
    "assign_update",
    "coarse_dp_start",
    "fake_quantize",
    "grid_histogram",
    "histogram_rows",
    "lloyd_1d",
    "lut_dequant",
    "lut_dequant_packed",
    "prefix_sums",
]
