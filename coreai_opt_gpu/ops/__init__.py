"""Public tensor ops: validate inputs, pick Triton or numpy, registered as torch.library ops."""

from coreai_opt_gpu.ops.lut_dequant import lut_dequant

__all__ = ["lut_dequant"]
