"""coreai_opt's `quantization.spec.qscheme` import path (see `scheme`)."""

from coreai_opt_gpu.quantization.spec.scheme import QuantizationScheme

__all__ = ["QuantizationScheme"]
