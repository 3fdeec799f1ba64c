"""coreai_opt's `quantization.spec.qformulation` import path (see `scheme`)."""

from coreai_opt_gpu.quantization.spec.scheme import QuantizationFormulation

__all__ = ["QuantizationFormulation"]
