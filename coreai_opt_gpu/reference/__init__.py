"""numpy references, one per Triton kernel and with the kernel's name.

They are the CPU fallback of every op and the oracle of every kernel test and benchmark.
`kmeans_1d` is the CPU path of the scalar engine (its Triton twin comes with the GPU engine).
"""

from coreai_opt_gpu.reference.kmeans_1d import batched_searchsorted, kmeans_1d
from coreai_opt_gpu.reference.lut_dequant import lut_dequant

__all__ = ["batched_searchsorted", "kmeans_1d", "lut_dequant"]
