"""Quantization: specs, configs and the Quantizer."""

from coreai_opt_gpu.quantization.config import (
    ModuleQuantizerConfig,
    OpQuantizerConfig,
    QuantizerConfig,
)
from coreai_opt_gpu.quantization.quantizer import Quantizer
from coreai_opt_gpu.quantization.spec import QuantizationScheme, QuantizationSpec

__all__ = [
    "ModuleQuantizerConfig",
    "OpQuantizerConfig",
    "QuantizationScheme",
    "QuantizationSpec",
    "Quantizer",
    "QuantizerConfig",
]
