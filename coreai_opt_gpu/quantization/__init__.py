"""Quantization: specs, configs and the Quantizer (coreai_opt's `quantization` names).

`fake_quantize`, `qparams_calculator` and `range_calculator` are reachable from here, as in
coreai_opt (`quantization.fake_quantize.FakeQuantizeImplBase`).
"""

from coreai_opt_gpu.quantization import fake_quantize as fake_quantize  # a submodule, as theirs
from coreai_opt_gpu.quantization.config import (
    ExecutionMode,
    InvalidExecutionModeError,
    ModuleQuantizerConfig,
    OpQuantizerConfig,
    QATSchedule,
    QuantizerConfig,
)
from coreai_opt_gpu.quantization.quantizer import Quantizer
from coreai_opt_gpu.quantization.spec import QuantizationScheme, QuantizationSpec
from coreai_opt_gpu.quantization.spec import qparams_calculator as qparams_calculator
from coreai_opt_gpu.quantization.spec import range_calculator as range_calculator

__all__ = [
    "ExecutionMode",
    "InvalidExecutionModeError",
    "ModuleQuantizerConfig",
    "OpQuantizerConfig",
    "QATSchedule",
    "QuantizationScheme",
    "QuantizationSpec",
    "Quantizer",
    "QuantizerConfig",
]
