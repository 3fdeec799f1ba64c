"""numpy references, one per Triton kernel and with the kernel's name.

They are the CPU fallback of every op and the oracle of every kernel test and benchmark.
`kmeans_1d_exact` (optimal 1-D k-means) is the oracle of the scalar engine's quality.
"""

from coreai_opt_gpu.reference.fake_quantize import fake_quantize, round_to_float8
from coreai_opt_gpu.reference.kmeans_1d import (
    SortedRows,
    assign_1d,
    batched_searchsorted,
    coarse_dp_start,
    grid_histogram,
    histogram_rows,
    lloyd_1d,
    prefix_sums,
)
from coreai_opt_gpu.reference.kmeans_1d_exact import kmeans_1d_dp, kmeans_1d_exact
from coreai_opt_gpu.reference.kmeans_vector import assign_update
from coreai_opt_gpu.reference.lut_dequant import lut_dequant, lut_dequant_packed
from coreai_opt_gpu.reference.packing import pack_indices, packed_row_bytes, unpack_indices

__all__ = [
    "SortedRows",
    "assign_1d",
    "assign_update",
    "batched_searchsorted",
    "coarse_dp_start",
    "fake_quantize",
    "grid_histogram",
    "histogram_rows",
    "kmeans_1d_dp",
    "kmeans_1d_exact",
    "lloyd_1d",
    "lut_dequant",
    "lut_dequant_packed",
    "pack_indices",
    "packed_row_bytes",
    "prefix_sums",
    "round_to_float8",
    "unpack_indices",
]
