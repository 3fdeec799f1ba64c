"""Quantization: specs, configs (the Quantizer itself comes with the joint flow)."""

from coreai_opt_gpu.quantization.config import (
    ModuleQuantizerConfig,
    OpQuantizerConfig,
    QuantizerConfig,
)
from coreai_opt_gpu.quantization.spec import QuantizationScheme, QuantizationSpec

__all__ = [
    "ModuleQuantizerConfig",
    "OpQuantizerConfig",
    "QuantizationScheme",
    "QuantizationSpec",
    "QuantizerConfig",
]
