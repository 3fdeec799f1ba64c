"""k-means palettizer configs: per op, per module, for a whole model (with presets), and the
palettization-aware-training schedule (coreai_opt's `palettization.config` names)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from coreai_opt_gpu.config.base import (
    activation_specs,
    final,
    module_state_specs,
    none_to_empty,
    state_specs,
)
from coreai_opt_gpu.config.compression import (
    CompressionConfig,
    ModuleCompressionConfig,
    OpCompressionConfig,
    WeightOnlyModuleValidationMixin,
    WeightOnlyOpValidationMixin,
)
from coreai_opt_gpu.palettization.spec import (
    PalettizationSpec,
    PerGroupedChannelGranularity,
    PerTensorGranularity,
    default_weight_palettization_spec,
)

PALETTIZED_STATES = ("weight", "in_proj_weight")


class PATSchedule(BaseModel):
    """When a module's fake palettization turns on inside `training_mode()`: at step
    `enable_fake_palettize` (counted by `KMeansPalettizer.step()`); before it the dense weight
    trains, and at it the weight is re-clustered from its trained values."""

    model_config = ConfigDict(frozen=True)

    enable_fake_palettize: int = Field(default=0, ge=0)

    def _compute_state(self, step_count: int) -> bool:
        """Whether fake palettization is on at `step_count`."""
        return step_count >= self.enable_fake_palettize


class OpKMeansPalettizerConfig(WeightOnlyOpValidationMixin, OpCompressionConfig):
    """Specs of one op's state tensors, keyed by state name or "*"; None disables a tensor,
    `op_state_spec=None` the whole op. Default: 4-bit `weight` and `in_proj_weight`.
    Palettization is weight-only: active `op_input_spec` / `op_output_spec` are rejected."""

    op_input_spec: activation_specs(PalettizationSpec)  # type: ignore[valid-type]
    op_output_spec: activation_specs(PalettizationSpec)  # type: ignore[valid-type]
    op_state_spec: state_specs(PalettizationSpec)  # type: ignore[valid-type]

    @classmethod
    def get_default_state_spec(cls) -> dict[str, PalettizationSpec | None]:
        spec = default_weight_palettization_spec()
        return dict.fromkeys(PALETTIZED_STATES, spec)


def _weight_specs(spec: PalettizationSpec) -> dict[str, PalettizationSpec | None]:
    return dict.fromkeys(OpKMeansPalettizerConfig.get_default_state_spec(), spec)


class _ModulePresets:
    """`ModuleKMeansPalettizerConfig.presets.w4()` and friends."""

    def __init__(self, owner: type) -> None:
        self._owner = owner

    def _grouped(self, n_bits: int, axis: int, group_size: int) -> ModuleKMeansPalettizerConfig:
        granularity = PerGroupedChannelGranularity(axis=axis, group_size=group_size)
        spec = PalettizationSpec(n_bits=n_bits, granularity=granularity)
        return self._owner(
            op_input_spec=None, op_output_spec=None, op_state_spec=_weight_specs(spec)
        )

    def w4(self, *, axis: int = 0, group_size: int = 16) -> ModuleKMeansPalettizerConfig:
        """4 bits, one LUT per `group_size` channels along `axis`."""
        return self._grouped(4, axis, group_size)

    def w6(self, *, axis: int = 0, group_size: int = 16) -> ModuleKMeansPalettizerConfig:
        """6 bits, one LUT per `group_size` channels along `axis`."""
        return self._grouped(6, axis, group_size)

    def w8(self) -> ModuleKMeansPalettizerConfig:
        """8 bits, one LUT per tensor."""
        spec = PalettizationSpec(n_bits=8, granularity=PerTensorGranularity())
        return self._owner(
            op_input_spec=None, op_output_spec=None, op_state_spec=_weight_specs(spec)
        )


@final
class ModuleKMeansPalettizerConfig(WeightOnlyModuleValidationMixin, ModuleCompressionConfig):
    """Palettization of a module's ops: op state specs, overrides by op type (exact op type,
    see `coreai_opt_gpu.config.op_types`) and op name (regex on "<module>.<function>", e.g.
    "lm_head.linear"; of several matches the later wins), and `module_state_spec` for the
    module's own tensors (the only way to reach an nn.Embedding's weight).

    enable_fast_kmeans_mode: cluster weights in fp16 range rounded to `rounding_precision`
    decimals (scalar specs only). pat_schedule: when palettization turns on in training mode.
    """

    op_input_spec: activation_specs(PalettizationSpec)  # type: ignore[valid-type]
    op_output_spec: activation_specs(PalettizationSpec)  # type: ignore[valid-type]
    op_state_spec: state_specs(PalettizationSpec)  # type: ignore[valid-type]
    op_type_config: dict[str, OpKMeansPalettizerConfig | None] = Field(default_factory=dict)
    op_name_config: dict[str, OpKMeansPalettizerConfig | None] = Field(default_factory=dict)
    module_input_spec: activation_specs(PalettizationSpec, none_to_empty) = Field(  # type: ignore[valid-type]
        default_factory=dict
    )
    module_output_spec: activation_specs(PalettizationSpec, none_to_empty) = Field(  # type: ignore[valid-type]
        default_factory=dict
    )
    module_state_spec: module_state_specs(PalettizationSpec) = Field(default_factory=dict)  # type: ignore[valid-type]
    enable_fast_kmeans_mode: bool = True
    rounding_precision: PositiveInt = 4
    pat_schedule: PATSchedule | None = None

    op_config_cls: ClassVar[type[OpCompressionConfig]] = OpKMeansPalettizerConfig
    check_op_type_keys: ClassVar[bool] = True
    presets: ClassVar[_ModulePresets]

    @model_validator(mode="after")
    def validate_fast_kmeans_cluster_dim_constraint(self) -> ModuleKMeansPalettizerConfig:
        """enable_fast_kmeans_mode=True with cluster_dim > 1 in op_state_spec is an error (as
        in coreai_opt; elsewhere fast mode is simply not used for vector specs)."""
        if not self.enable_fast_kmeans_mode:
            return self
        for state, spec in self.op_state_spec.items():
            if spec is not None and spec.cluster_dim > 1:
                raise ValueError(
                    f"enable_fast_kmeans_mode is not supported when cluster_dim > 1. Got "
                    f"enable_fast_kmeans_mode=True, cluster_dim={spec.cluster_dim} for state "
                    f"'{state}' in op_state_spec; set enable_fast_kmeans_mode=False for vector "
                    f"palettization"
                )
        return self

    def _get_fake_module_kwargs(self) -> dict[str, Any]:
        kwargs = super()._get_fake_module_kwargs()
        kwargs.pop("pat_schedule", None)
        return kwargs


def _default_module_config() -> ModuleKMeansPalettizerConfig:
    return ModuleKMeansPalettizerConfig()


class _ModelPresets:
    """`KMeansPalettizerConfig.presets.w4()` and friends: the module preset as global config."""

    def __init__(self, owner: type) -> None:
        self._owner = owner

    def w4(self, *, axis: int = 0, group_size: int = 16) -> KMeansPalettizerConfig:
        """4 bits, one LUT per `group_size` channels along `axis`, for every module."""
        return self._owner(
            global_config=ModuleKMeansPalettizerConfig.presets.w4(axis=axis, group_size=group_size)
        )

    def w6(self, *, axis: int = 0, group_size: int = 16) -> KMeansPalettizerConfig:
        """6 bits, one LUT per `group_size` channels along `axis`, for every module."""
        return self._owner(
            global_config=ModuleKMeansPalettizerConfig.presets.w6(axis=axis, group_size=group_size)
        )

    def w8(self) -> KMeansPalettizerConfig:
        """8 bits, one LUT per tensor, for every module."""
        return self._owner(global_config=ModuleKMeansPalettizerConfig.presets.w8())


@final
class KMeansPalettizerConfig(CompressionConfig):
    """Palettization of a model. Which config a module gets: the later of the
    `module_name_configs` regexes that fully matches its name (or an ancestor's), else the
    later `module_type_configs` key that is its exact class (or an ancestor's), else
    `global_config`; a matched module's config applies to its children (without its
    module-level specs). None values disable. No arguments: the default 4-bit global config."""

    global_config: ModuleKMeansPalettizerConfig | None = None
    module_type_configs: dict[str, ModuleKMeansPalettizerConfig | None] = Field(
        default_factory=dict
    )
    module_name_configs: dict[str, ModuleKMeansPalettizerConfig | None] = Field(
        default_factory=dict
    )

    module_config_cls: ClassVar[type[ModuleCompressionConfig]] = ModuleKMeansPalettizerConfig
    _CONFIG_KEY: ClassVar[str] = "kmeans_palettization_config"
    _SPEC_KEY: ClassVar[str] = "palettization_spec"
    presets: ClassVar[_ModelPresets]


ModuleKMeansPalettizerConfig.presets = _ModulePresets(ModuleKMeansPalettizerConfig)
KMeansPalettizerConfig.presets = _ModelPresets(KMeansPalettizerConfig)

__all__ = [
    "KMeansPalettizerConfig",
    "ModuleKMeansPalettizerConfig",
    "OpKMeansPalettizerConfig",
    "PATSchedule",
]
