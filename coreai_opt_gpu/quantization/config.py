"""Quantizer configs: per op, per module, and for a whole model (same precedence as palettizer)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from coreai_opt_gpu.config.base import ConfigModel, drop_neutral_upstream_keys, final
from coreai_opt_gpu.config.compression import (
    CompressionConfigMixin,
    check_op_name_patterns,
    defaulted_global,
    normalize_op_type_keys,
)
from coreai_opt_gpu.config.module_types import canonical_type_keys
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


OpConfigs = dict[str, OpQuantizerConfig | None]


@final
class ModuleQuantizerConfig(ConfigModel):
    """Quantization of one module's ops, with overrides by op type, op name and state name."""

    op_state_spec: Specs | None = Field(default_factory=default_state_spec)
    op_input_spec: Specs | None = Field(default_factory=default_activation_specs)
    op_output_spec: Specs | None = Field(default_factory=default_activation_specs)
    op_type_config: Annotated[OpConfigs, BeforeValidator(normalize_op_type_keys)] = Field(
        default_factory=dict
    )
    op_name_config: Annotated[
        OpConfigs, AfterValidator(lambda m: check_op_name_patterns(m, "op_name_config"))
    ] = Field(default_factory=dict)
    module_state_spec: Specs = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _drop_upstream_keys(cls, data: Any) -> Any:
        return drop_neutral_upstream_keys(
            data, cls.__name__, ("qat_schedule",), _EMPTY_UPSTREAM_KEYS
        )


ModuleConfigs = dict[str, ModuleQuantizerConfig | None]


@final
class QuantizerConfig(CompressionConfigMixin, ConfigModel):
    """Quantization of a model: precedence module name > module type > global."""

    global_config: ModuleQuantizerConfig | None = None
    module_type_configs: Annotated[ModuleConfigs, BeforeValidator(canonical_type_keys)] = Field(
        default_factory=dict
    )
    module_name_configs: Annotated[
        ModuleConfigs, AfterValidator(lambda m: check_op_name_patterns(m, "module_name_configs"))
    ] = Field(default_factory=dict)

    root_key: ClassVar[str] = "quantization_config"

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        data = drop_neutral_upstream_keys(
            data, cls.__name__, ("preserved_attributes", "execution_mode", "kv_cache_quant_configs")
        )
        return defaulted_global(data, ModuleQuantizerConfig)
