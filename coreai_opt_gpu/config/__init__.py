"""Config machinery shared by palettization and quantization (coreai_opt's `config` names),
the op tracer and the resolver."""

from coreai_opt_gpu.common import CompressionType
from coreai_opt_gpu.config.compression import (
    CompressionConfig,
    ModuleCompressionConfig,
    OpCompressionConfig,
    WeightOnlyModuleValidationMixin,
    WeightOnlyOpValidationMixin,
)
from coreai_opt_gpu.config.op_types import DEFAULT_CHANNEL_AXIS, OP_TYPES, normalize_op_type
from coreai_opt_gpu.config.resolver import (
    ConfigLevel,
    SpecSite,
    module_configs,
    resolve_spec,
    resolve_states,
    select_module_config,
)
from coreai_opt_gpu.config.spec import CompressionSpec

__all__ = [
    "DEFAULT_CHANNEL_AXIS",
    "OP_TYPES",
    "CompressionConfig",
    "CompressionSpec",
    "CompressionType",
    "ConfigLevel",
    "ModuleCompressionConfig",
    "OpCompressionConfig",
    "SpecSite",
    "WeightOnlyModuleValidationMixin",
    "WeightOnlyOpValidationMixin",
    "module_configs",
    "normalize_op_type",
    "resolve_spec",
    "resolve_states",
    "select_module_config",
]
