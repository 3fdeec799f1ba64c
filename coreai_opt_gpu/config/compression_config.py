"""coreai_opt's `config.compression_config` import path (see `compression`)."""

from coreai_opt_gpu.config.compression import (
    CompressionConfig,
    ModuleCompressionConfig,
    OpCompressionConfig,
    WeightOnlyModuleValidationMixin,
    WeightOnlyOpValidationMixin,
)

__all__ = [
    "CompressionConfig",
    "ModuleCompressionConfig",
    "OpCompressionConfig",
    "WeightOnlyModuleValidationMixin",
    "WeightOnlyOpValidationMixin",
]
