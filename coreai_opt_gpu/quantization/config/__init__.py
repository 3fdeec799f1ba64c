"""Quantizer configuration classes and the execution mode (coreai_opt's
`quantization.config`)."""

from coreai_opt_gpu.quantization.config.quantization_config import (
    ExecutionMode,
    InvalidExecutionModeError,
    KVCacheQuantConfig,
    ModuleQuantizerConfig,
    OpQuantizerConfig,
    QATSchedule,
    QuantizerConfig,
)

__all__ = [
    "ExecutionMode",
    "InvalidExecutionModeError",
    "KVCacheQuantConfig",
    "ModuleQuantizerConfig",
    "OpQuantizerConfig",
    "QATSchedule",
    "QuantizerConfig",
]
