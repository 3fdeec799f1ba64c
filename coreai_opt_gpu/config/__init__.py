"""Config machinery shared by palettization and quantization: resolver, op and module types."""

from coreai_opt_gpu.config.op_types import DEFAULT_CHANNEL_AXIS, OP_TYPES, normalize_op_type
from coreai_opt_gpu.config.resolver import SpecSite, resolve_spec, select_module_config

__all__ = [
    "DEFAULT_CHANNEL_AXIS",
    "OP_TYPES",
    "SpecSite",
    "normalize_op_type",
    "resolve_spec",
    "select_module_config",
]
