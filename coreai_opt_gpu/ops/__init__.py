"""Tensor ops: validate inputs, pick Triton or numpy (see `coreai_opt_gpu.backend`)."""

from coreai_opt_gpu.ops.fake_quantize import fake_quantize
from coreai_opt_gpu.ops.kmeans_1d import assign_1d, lloyd_1d
from coreai_opt_gpu.ops.kmeans_vector import assign_update
from coreai_opt_gpu.ops.lut_dequant import lut_dequant, lut_dequant_packed

__all__ = [
    "assign_1d",
    "assign_update",
    "fake_quantize",
    "lloyd_1d",
    "lut_dequant",
    "lut_dequant_packed",
]
