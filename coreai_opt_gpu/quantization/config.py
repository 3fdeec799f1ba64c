"""Quantizer configs: per op, per module, and for a whole model (same precedence as palettizer)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from coreai_opt_gpu.config.base import ConfigModel, drop_neutral_upstream_keys, final
from coreai_opt_gpu.config.compression import (
    CompressionConfigMixin,
    configs_by_module_type,
    configs_by_op_type,
    configs_by_regex,
    defaulted_global,
)
from coreai_opt_gpu.quantization.spec import (
    QuantizationSpec,
    default_activation_quantization_spec,
    default_weight_quantization_spec,
)

Specs = dict[str, QuantizationSpec | None]
# Module-boundary specs exist upstream; only their empty form is accepted here.
_EMPTY_UPSTREAM_KEYS = ("module_input_spec", "module_output_spec")


def default_state_spec() -> Specs:
    """int8 symmetric per-output-channel weights."""
    return {"weight": default_weight_quantization_spec()}


def default_activation_specs() -> Specs:
    """int8 symmetric per-tensor moving-average activations, for every input or output."""
    return {"*": default_activation_quantization_spec()}


@final
class OpQuantizerConfig(ConfigModel):
    """Specs of one op's weights (state), inputs and outputs; None disables."""

    op_state_spec: Specs | None = Field(default_factory=default_state_spec)
    op_input_spec: Specs | None = Field(default_factory=default_activation_specs)
    op_output_spec: Specs | None = Field(default_factory=default_activation_specs)


OpConfigsByType = configs_by_op_type(OpQuantizerConfig)
OpConfigsByName = configs_by_regex(OpQuantizerConfig, "op_name_config")


@final
class ModuleQuantizerConfig(ConfigModel):
    """Quantization of one module's ops, with overrides by op type, op name and state name."""

    op_state_spec: Specs | None = Field(default_factory=default_state_spec)
    op_input_spec: Specs | None = Field(default_factory=default_activation_specs)
    op_output_spec: Specs | None = Field(default_factory=default_activation_specs)
    op_type_config: OpConfigsByType = Field(default_factory=dict)
    op_name_config: OpConfigsByName = Field(default_factory=dict)
    module_state_spec: Specs = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _drop_upstream_keys(cls, data: Any) -> Any:
        return drop_neutral_upstream_keys(
            data, cls.__name__, ("qat_schedule",), _EMPTY_UPSTREAM_KEYS
        )


ModuleConfigsByType = configs_by_module_type(ModuleQuantizerConfig)
ModuleConfigsByName = configs_by_regex(ModuleQuantizerConfig, "module_name_configs")


@final
class QuantizerConfig(CompressionConfigMixin, ConfigModel):
    """Quantization of a model: precedence module name > module type > global."""

    global_config: ModuleQuantizerConfig | None = None
    module_type_configs: ModuleConfigsByType = Field(default_factory=dict)
    module_name_configs: ModuleConfigsByName = Field(default_factory=dict)

    root_key: ClassVar[str] = "quantization_config"

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        data = drop_neutral_upstream_keys(
            data, cls.__name__, ("preserved_attributes", "execution_mode", "kv_cache_quant_configs")
        )
        return defaulted_global(data, ModuleQuantizerConfig)
