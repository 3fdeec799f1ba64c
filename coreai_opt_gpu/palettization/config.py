"""k-means palettizer configs: per op, per module, and for a whole model (with presets)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, PositiveInt, model_validator

from coreai_opt_gpu.config.base import ConfigModel, drop_neutral_upstream_keys, final
from coreai_opt_gpu.config.compression import (
    CompressionConfigMixin,
    configs_by_module_type,
    configs_by_op_type,
    configs_by_regex,
    defaulted_global,
    iter_specs,
)
from coreai_opt_gpu.palettization.spec import (
    PalettizationSpec,
    PerGroupedChannelGranularity,
    default_weight_palettization_spec,
)

StateSpecs = dict[str, PalettizationSpec | None]
PALETTIZED_STATES = ("weight", "in_proj_weight")
# Keys coreai_opt writes on palettizer configs that mean nothing for palettization.
_EMPTY_UPSTREAM_KEYS = (
    "op_input_spec",
    "op_output_spec",
    "module_input_spec",
    "module_output_spec",
)


def default_op_state_spec() -> StateSpecs:
    """4-bit per-tensor scalar palettization of `weight` and `in_proj_weight`."""
    return {name: default_weight_palettization_spec() for name in PALETTIZED_STATES}


def _weight_specs(spec: PalettizationSpec) -> StateSpecs:
    return dict.fromkeys(PALETTIZED_STATES, spec)


@final
class OpKMeansPalettizerConfig(ConfigModel):
    """Specs of one op's tensors, keyed by state name or "*"; None disables a tensor or the op."""

    op_state_spec: StateSpecs | None = Field(default_factory=default_op_state_spec)

    @model_validator(mode="before")
    @classmethod
    def _drop_upstream_keys(cls, data: Any) -> Any:
        return drop_neutral_upstream_keys(data, cls.__name__, (), _EMPTY_UPSTREAM_KEYS)


class _ModulePresets:
    """`ModuleKMeansPalettizerConfig.presets.w4()` and friends."""

    @staticmethod
    def w4(axis: int | None = 0, group_size: int = 16) -> ModuleKMeansPalettizerConfig:
        """4 bits, one LUT per `group_size` channels along `axis`."""
        return _grouped_preset(4, axis, group_size)

    @staticmethod
    def w6(axis: int | None = 0, group_size: int = 16) -> ModuleKMeansPalettizerConfig:
        """6 bits, one LUT per `group_size` channels along `axis`."""
        return _grouped_preset(6, axis, group_size)

    @staticmethod
    def w8() -> ModuleKMeansPalettizerConfig:
        """8 bits, one LUT per tensor."""
        spec = PalettizationSpec(n_bits=8)
        return ModuleKMeansPalettizerConfig(op_state_spec=_weight_specs(spec))


def _grouped_preset(n_bits: int, axis: int | None, group_size: int) -> ModuleKMeansPalettizerConfig:
    granularity = PerGroupedChannelGranularity(axis=axis, group_size=group_size)
    spec = PalettizationSpec(n_bits=n_bits, granularity=granularity)
    return ModuleKMeansPalettizerConfig(op_state_spec=_weight_specs(spec))


OpConfigsByType = configs_by_op_type(OpKMeansPalettizerConfig)
OpConfigsByName = configs_by_regex(OpKMeansPalettizerConfig, "op_name_config")


@final
class ModuleKMeansPalettizerConfig(ConfigModel):
    """Palettization of one module's ops: op state specs, overrides by op type/name/state."""

    op_state_spec: StateSpecs | None = Field(default_factory=default_op_state_spec)
    op_type_config: OpConfigsByType = Field(default_factory=dict)
    op_name_config: OpConfigsByName = Field(default_factory=dict)
    module_state_spec: StateSpecs = Field(default_factory=dict)
    enable_fast_kmeans_mode: bool = True
    rounding_precision: PositiveInt = 4

    presets: ClassVar[type[_ModulePresets]] = _ModulePresets

    @model_validator(mode="before")
    @classmethod
    def _drop_upstream_keys(cls, data: Any) -> Any:
        return drop_neutral_upstream_keys(
            data, cls.__name__, ("pat_schedule",), _EMPTY_UPSTREAM_KEYS
        )

    @model_validator(mode="after")
    def _check_fast_mode(self) -> ModuleKMeansPalettizerConfig:
        if not self.enable_fast_kmeans_mode:
            return self
        for field in ("op_state_spec", "module_state_spec"):
            for where, spec in iter_specs(self, field):
                if spec is not None and spec.cluster_dim > 1:
                    raise ValueError(
                        f"enable_fast_kmeans_mode=True is not supported with cluster_dim > 1: "
                        f"{where} has cluster_dim={spec.cluster_dim}; set "
                        f"enable_fast_kmeans_mode=False for vector palettization"
                    )
        return self


def default_module_config() -> ModuleKMeansPalettizerConfig:
    return ModuleKMeansPalettizerConfig()


class _ModelPresets:
    """`KMeansPalettizerConfig.presets.w4()` and friends: the module preset as global config."""

    @staticmethod
    def w4(axis: int | None = 0, group_size: int = 16) -> KMeansPalettizerConfig:
        return KMeansPalettizerConfig(global_config=_ModulePresets.w4(axis, group_size))

    @staticmethod
    def w6(axis: int | None = 0, group_size: int = 16) -> KMeansPalettizerConfig:
        return KMeansPalettizerConfig(global_config=_ModulePresets.w6(axis, group_size))

    @staticmethod
    def w8() -> KMeansPalettizerConfig:
        return KMeansPalettizerConfig(global_config=_ModulePresets.w8())


ModuleConfigsByType = configs_by_module_type(ModuleKMeansPalettizerConfig)
ModuleConfigsByName = configs_by_regex(ModuleKMeansPalettizerConfig, "module_name_configs")


@final
class KMeansPalettizerConfig(CompressionConfigMixin, ConfigModel):
    """Palettization of a model: precedence module name > module type > global."""

    global_config: ModuleKMeansPalettizerConfig | None = None
    module_type_configs: ModuleConfigsByType = Field(default_factory=dict)
    module_name_configs: ModuleConfigsByName = Field(default_factory=dict)

    root_key: ClassVar[str] = "kmeans_palettization_config"
    presets: ClassVar[type[_ModelPresets]] = _ModelPresets

    @model_validator(mode="before")
    @classmethod
    def _default_global(cls, data: Any) -> Any:
        return defaulted_global(data, default_module_config)
