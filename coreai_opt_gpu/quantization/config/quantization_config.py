"""Quantizer configs: per op, per module (with a QAT schedule) and for a whole model (execution
mode, preserved attributes), with presets; coreai_opt's `quantization.config` names.

Precedence and inheritance are the palettizer's (`coreai_opt_gpu.config.resolver`): module
name > module type > global, a matched module's config applies to its children.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import Self

from coreai_opt_gpu.config.base import (
    activation_specs,
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
from coreai_opt_gpu.export import DeprecatedAliasEnumMeta
from coreai_opt_gpu.quantization.spec import (
    PerBlockGranularity,
    PerChannelGranularity,
    QuantizationScheme,
    QuantizationSpec,
    default_activation_quantization_spec,
    default_weight_quantization_spec,
)


class QATSchedule(BaseModel):
    """When observers and fake quantization are on during `training_mode()`, counted in
    `Quantizer.step()` calls: observers from `enable_observer` until `disable_observer`
    (None: never off), fake quantization from `enable_fake_quant` on."""

    model_config = ConfigDict(frozen=True)

    class _ScheduleState(NamedTuple):
        obs_on: bool
        fq_on: bool

    enable_observer: int = Field(default=0, ge=0)
    enable_fake_quant: int = Field(default=0, ge=0)
    disable_observer: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _validate_schedule(self) -> QATSchedule:
        if self.enable_fake_quant < self.enable_observer:
            raise ValueError(
                f"enable_fake_quant ({self.enable_fake_quant}) must be >= "
                f"enable_observer ({self.enable_observer})"
            )
        if self.disable_observer is not None:
            if self.disable_observer <= self.enable_observer:
                raise ValueError(
                    f"disable_observer ({self.disable_observer}) must be > "
                    f"enable_observer ({self.enable_observer})"
                )
            if self.disable_observer < self.enable_fake_quant:
                raise ValueError(
                    f"disable_observer ({self.disable_observer}) must be >= "
                    f"enable_fake_quant ({self.enable_fake_quant})"
                )
        return self

    def _compute_state(self, step_count: int) -> _ScheduleState:
        """(observer on, fake quantization on) after `step_count` steps."""
        end = self.disable_observer if self.disable_observer is not None else float("inf")
        return self._ScheduleState(
            obs_on=self.enable_observer <= step_count < end,
            fq_on=step_count >= self.enable_fake_quant,
        )


class ExecutionMode(str, Enum, metaclass=DeprecatedAliasEnumMeta):
    """How the Quantizer inserts fake quantization: GRAPH (default) exports the model with
    `torch.export` and annotates it with torchao's pt2e; EAGER keeps the `nn.Module` (models
    that do not export). `PT2E` is a deprecated name of GRAPH."""

    GRAPH = "graph"
    EAGER = "eager"

    __deprecated_aliases__: ClassVar[dict[str, str]] = {"PT2E": "GRAPH"}

    def __str__(self) -> str:
        return self.value


class InvalidExecutionModeError(ValueError):
    """An execution mode that is not an `ExecutionMode` value."""

    def __init__(self, execution_mode: object) -> None:
        super().__init__(f"Unknown execution_mode {execution_mode}. Expected 'graph' or 'eager'.")


def _parse_execution_mode(value: Any) -> ExecutionMode:
    if isinstance(value, ExecutionMode):
        return value
    try:
        return ExecutionMode(value)
    except ValueError:
        raise InvalidExecutionModeError(value) from None


@final
class OpQuantizerConfig(OpCompressionConfig):
    """Specs of one op's inputs (by index or "*"), output ("*" or 0) and states (by name or
    "*"); None disables. Defaults: int8 per-channel weights, int8 per-tensor moving-average
    inputs and outputs."""

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


def _weight_only(owner: type, spec: QuantizationSpec, **extra: Any) -> Any:
    return owner(op_input_spec=None, op_output_spec=None, op_state_spec={"weight": spec}, **extra)


def _w8(axis: int | None) -> QuantizationSpec:
    granularity = PerChannelGranularity(axis=axis)
    return QuantizationSpec(
        dtype="int8", qscheme=QuantizationScheme.SYMMETRIC, granularity=granularity
    )


def _w4(axis: int | None) -> QuantizationSpec:
    granularity = PerChannelGranularity(axis=axis)
    return QuantizationSpec(
        dtype="int4", qscheme=QuantizationScheme.SYMMETRIC, granularity=granularity
    )


def _w4_per_block(block_size: int, axis: int | None) -> QuantizationSpec:
    granularity = PerBlockGranularity(axis=axis, block_size=block_size)
    return QuantizationSpec(
        dtype="int4", qscheme=QuantizationScheme.SYMMETRIC, granularity=granularity
    )


class _ModulePresets:
    """`ModuleQuantizerConfig.presets.w8()` and friends: weight-only module configs (an axis
    of None resolves per op: output channels for per-channel, input channels for blocks)."""

    def __init__(self, owner: type) -> None:
        self._owner = owner

    def w8(self, *, axis: int | None = None) -> ModuleQuantizerConfig:
        """int8 symmetric weights, one scale per output channel."""
        return _weight_only(self._owner, _w8(axis))

    def w4(self, *, axis: int | None = None) -> ModuleQuantizerConfig:
        """int4 symmetric weights, one scale per output channel."""
        return _weight_only(self._owner, _w4(axis))

    def w4_per_block(
        self, *, block_size: int = 32, axis: int | None = None
    ) -> ModuleQuantizerConfig:
        """int4 symmetric weights, one scale per `block_size` input channels."""
        return _weight_only(self._owner, _w4_per_block(block_size, axis))


@final
class ModuleQuantizerConfig(ModuleCompressionConfig):
    """Quantization of one module's ops: op-level specs, overrides by op type and op name
    (regex on the op's name), module-boundary specs (`module_input_spec`,
    `module_output_spec`, override the op specs at the module's inputs and outputs),
    `module_state_spec` (the module's own tensors) and a QAT schedule."""

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
    qat_schedule: QATSchedule | None = None

    op_config_cls: ClassVar[type[OpCompressionConfig]] = OpQuantizerConfig
    presets: ClassVar[_ModulePresets]


class KVCacheQuantConfig(BaseModel):
    """coreai_opt's KV-cache buffer quantization for one cache-update op (graph mode). The
    class validates as coreai_opt's does; `QuantizerConfig(kv_cache_quant_configs=...)` with
    entries is rejected by coreai_opt_gpu (not supported yet)."""

    model_config = ConfigDict(frozen=True)

    op_quantizer_config: OpQuantizerConfig

    @model_validator(mode="after")
    def _validate_op_quantizer_config(self) -> Self:
        config = self.op_quantizer_config
        specs = config.op_input_spec or {}
        int_keys = [k for k in specs if isinstance(k, int) and not isinstance(k, bool) and k >= 0]
        if len(int_keys) != 1 or len(specs) != 1:
            raise ValueError(
                "KVCacheQuantConfig.op_quantizer_config.op_input_spec must contain exactly one "
                f"key, which must be a non-negative int; got keys {list(specs)!r}."
            )
        if next(iter(specs.values())) is None:
            raise ValueError(
                "KVCacheQuantConfig.op_quantizer_config.op_input_spec must map its int key to "
                "a non-None QuantizationSpec."
            )
        if spec_is_active(config.op_output_spec):
            raise ValueError(
                "KVCacheQuantConfig.op_quantizer_config.op_output_spec must be empty or None."
            )
        if spec_is_active(config.op_state_spec):
            raise ValueError(
                "KVCacheQuantConfig.op_quantizer_config.op_state_spec must be empty or None."
            )
        return self

    @property
    def quant_input_idx(self) -> int:
        return next(iter(self.op_quantizer_config.op_input_spec))


class _ModelPresets:
    """`QuantizerConfig.presets.w8()` and friends: the module preset as global config."""

    def __init__(self, owner: type) -> None:
        self._owner = owner

    def w8(
        self, *, axis: int | None = None, execution_mode: ExecutionMode = ExecutionMode.GRAPH
    ) -> QuantizerConfig:
        """int8 symmetric per-output-channel weights for every module, no activations."""
        global_config = ModuleQuantizerConfig.presets.w8(axis=axis)
        return self._owner(global_config=global_config, execution_mode=execution_mode)

    def w4(
        self, *, axis: int | None = None, execution_mode: ExecutionMode = ExecutionMode.GRAPH
    ) -> QuantizerConfig:
        """int4 symmetric per-output-channel weights for every module, no activations."""
        global_config = ModuleQuantizerConfig.presets.w4(axis=axis)
        return self._owner(global_config=global_config, execution_mode=execution_mode)

    def w4_per_block(
        self,
        *,
        block_size: int = 32,
        axis: int | None = None,
        execution_mode: ExecutionMode = ExecutionMode.GRAPH,
    ) -> QuantizerConfig:
        """int4 symmetric weights, one scale per `block_size` input channels, every module."""
        global_config = ModuleQuantizerConfig.presets.w4_per_block(block_size=block_size, axis=axis)
        return self._owner(global_config=global_config, execution_mode=execution_mode)


@final
class QuantizerConfig(CompressionConfig):
    """Quantization of a model: global, module-type and module-name configs (precedence and
    inheritance as `KMeansPalettizerConfig`), the execution mode (graph by default), model
    attributes to keep on the prepared and finalized models (`preserved_attributes`), and
    coreai_opt's `kv_cache_quant_configs` (only None / empty is supported)."""

    global_config: ModuleQuantizerConfig | None = None
    module_type_configs: dict[str, ModuleQuantizerConfig | None] = Field(default_factory=dict)
    module_name_configs: dict[str, ModuleQuantizerConfig | None] = Field(default_factory=dict)
    preserved_attributes: list[str] | None = None
    execution_mode: ExecutionMode = ExecutionMode.GRAPH
    kv_cache_quant_configs: dict[str, KVCacheQuantConfig] | None = None

    module_config_cls: ClassVar[type[ModuleCompressionConfig]] = ModuleQuantizerConfig
    _CONFIG_KEY: ClassVar[str] = "quantization_config"
    _SPEC_KEY: ClassVar[str] = "quantization_spec"
    presets: ClassVar[_ModelPresets]

    @field_validator("execution_mode", mode="before")
    @classmethod
    def _execution_mode(cls, value: Any) -> ExecutionMode:
        return _parse_execution_mode(value)

    @field_validator("kv_cache_quant_configs", mode="after")
    @classmethod
    def _no_kv_cache(cls, value: dict[str, KVCacheQuantConfig] | None) -> Any:
        if value:
            raise ValueError(
                f"kv_cache_quant_configs={sorted(value)} is not supported by coreai_opt_gpu "
                f"yet (KV-cache buffer quantization); leave it None"
            )
        return value

    def set_execution_mode(self, mode: ExecutionMode | str) -> Self:
        """Set the execution mode ("graph" or "eager"); returns the config."""
        self.execution_mode = _parse_execution_mode(mode)
        return self


ModuleQuantizerConfig.presets = _ModulePresets(ModuleQuantizerConfig)
QuantizerConfig.presets = _ModelPresets(QuantizerConfig)

__all__ = [
    "ExecutionMode",
    "InvalidExecutionModeError",
    "KVCacheQuantConfig",
    "ModuleQuantizerConfig",
    "OpQuantizerConfig",
    "QATSchedule",
    "QuantizerConfig",
]
