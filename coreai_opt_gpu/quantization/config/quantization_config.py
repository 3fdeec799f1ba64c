"""Quantizer configs: per op, per module, and for a whole model (same classes and precedence
as the palettizer's, built on `coreai_opt_gpu.config.compression`)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from coreai_opt_gpu.config.base import (
    activation_specs,
    drop_neutral_upstream_keys,
    final,
    module_state_specs,
    none_to_empty,
    spec_is_active,
    state_specs,
)
from coreai_opt_gpu.config.compression import (
    CompressionConfig,
    ModuleCompressionConfig,
    OpCompressionConfig,
)
from coreai_opt_gpu.quantization.spec import (
    QuantizationSpec,
    default_activation_quantization_spec,
    default_weight_quantization_spec,
)


@final
class OpQuantizerConfig(OpCompressionConfig):
    """Specs of one op's weights (state), inputs and outputs; None disables. Defaults: int8
    per-channel weights, int8 per-tensor moving-average inputs and outputs ("*")."""

    op_input_spec: activation_specs(QuantizationSpec)  # type: ignore[valid-type]
    op_output_spec: activation_specs(QuantizationSpec)  # type: ignore[valid-type]
    op_state_spec: state_specs(QuantizationSpec)  # type: ignore[valid-type]

    @classmethod
    def get_default_input_spec(cls) -> dict[str | int, QuantizationSpec | None]:
        return {"*": default_activation_quantization_spec()}

    @classmethod
    def get_default_output_spec(cls) -> dict[str | int, QuantizationSpec | None]:
        return {"*": default_activation_quantization_spec()}

    @classmethod
    def get_default_state_spec(cls) -> dict[str, QuantizationSpec | None]:
        return {"weight": default_weight_quantization_spec()}


@final
class ModuleQuantizerConfig(ModuleCompressionConfig):
    """Quantization of one module's ops, with overrides by op type, op name and state name.
    Module-boundary specs (`module_input_spec`, `module_output_spec`) are not supported yet:
    only their empty form is accepted; coreai_opt's `qat_schedule` only as None."""

    op_input_spec: activation_specs(QuantizationSpec)  # type: ignore[valid-type]
    op_output_spec: activation_specs(QuantizationSpec)  # type: ignore[valid-type]
    op_state_spec: state_specs(QuantizationSpec)  # type: ignore[valid-type]
    op_type_config: dict[str, OpQuantizerConfig | None] = Field(default_factory=dict)
    op_name_config: dict[str, OpQuantizerConfig | None] = Field(default_factory=dict)
    module_input_spec: activation_specs(QuantizationSpec, none_to_empty) = Field(  # type: ignore[valid-type]
        default_factory=dict
    )
    module_output_spec: activation_specs(QuantizationSpec, none_to_empty) = Field(  # type: ignore[valid-type]
        default_factory=dict
    )
    module_state_spec: module_state_specs(QuantizationSpec) = Field(default_factory=dict)  # type: ignore[valid-type]

    op_config_cls: ClassVar[type[OpCompressionConfig]] = OpQuantizerConfig

    @model_validator(mode="before")
    @classmethod
    def _drop_upstream_keys(cls, data: Any) -> Any:
        return drop_neutral_upstream_keys(data, cls.__name__, ("qat_schedule",))

    @model_validator(mode="after")
    def _no_module_boundary_specs(self) -> ModuleQuantizerConfig:
        for key in ("module_input_spec", "module_output_spec"):
            if spec_is_active(getattr(self, key)):
                raise ValueError(
                    f"{type(self).__name__}.{key} is not supported by coreai_opt_gpu yet; "
                    f"quantize the module's ops with op_input_spec / op_output_spec"
                )
        return self


@final
class QuantizerConfig(CompressionConfig):
    """Quantization of a model: same precedence and inheritance as `KMeansPalettizerConfig`."""

    global_config: ModuleQuantizerConfig | None = None
    module_type_configs: dict[str, ModuleQuantizerConfig | None] = Field(default_factory=dict)
    module_name_configs: dict[str, ModuleQuantizerConfig | None] = Field(default_factory=dict)

    module_config_cls: ClassVar[type[ModuleCompressionConfig]] = ModuleQuantizerConfig
    _CONFIG_KEY: ClassVar[str] = "quantization_config"
    _SPEC_KEY: ClassVar[str] = "quantization_spec"

    @model_validator(mode="before")
    @classmethod
    def _drop_upstream_keys(cls, data: Any) -> Any:
        return drop_neutral_upstream_keys(
            data, cls.__name__, ("preserved_attributes", "execution_mode", "kv_cache_quant_configs")
        )
