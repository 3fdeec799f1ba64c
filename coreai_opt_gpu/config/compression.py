"""Config classes shared by palettization and quantization (coreai_opt's `config` names).

- `OpCompressionConfig`: specs of one op's inputs, outputs and states.
- `ModuleCompressionConfig`: a module's op-level specs, overrides by op type and op name, and
  module-level specs.
- `CompressionConfig`: a model's global, module-type and module-name configs; setters that
  chain, `only_for` / `without`, `get_module_config`, `build_module_config_dict`, dict/YAML IO
  under one root key.

Values and normalizations are coreai_opt's: a None spec dict disables every tensor
(`{"*": None}`), a None op/module config becomes a disabled config, module-type keys are
fully qualified names. One documented deviation: a `CompressionConfig` given only
module-type/module-name configs leaves the other modules alone (its global config is the
disabled one) and warns that coreai_opt 0.3.0 would apply the default config to them.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import IO, Any, ClassVar

import yaml
from pydantic import Field, field_validator, model_validator
from torch import nn
from typing_extensions import Self

from coreai_opt_gpu.config.base import (
    ConfigModel,
    activation_specs,
    module_state_specs,
    none_to_empty,
    spec_is_active,
    state_specs,
)
from coreai_opt_gpu.config.module_types import qualified_name
from coreai_opt_gpu.config.op_types import normalize_op_type_keys
from coreai_opt_gpu.config.spec import CompressionSpec


class OpCompressionConfig(ConfigModel):
    """Specs of one op's tensors: inputs and outputs by index, name or "*", states by name or
    "*". A field left out takes the compression's default; None disables that kind."""

    op_input_spec: activation_specs(CompressionSpec)  # type: ignore[valid-type]
    op_output_spec: activation_specs(CompressionSpec)  # type: ignore[valid-type]
    op_state_spec: state_specs(CompressionSpec)  # type: ignore[valid-type]

    @classmethod
    def get_default_input_spec(cls) -> dict[str | int, Any]:
        return {}

    @classmethod
    def get_default_output_spec(cls) -> dict[str | int, Any]:
        return {}

    @classmethod
    def get_default_state_spec(cls) -> dict[str, Any]:
        return {}

    @model_validator(mode="before")
    @classmethod
    def apply_defaults(cls, data: Any) -> Any:
        """Fill the spec fields that were left out with the class defaults."""
        if not isinstance(data, dict):
            return data
        defaults = {
            "op_input_spec": cls.get_default_input_spec,
            "op_output_spec": cls.get_default_output_spec,
            "op_state_spec": cls.get_default_state_spec,
        }
        return {**{k: f() for k, f in defaults.items() if k not in data}, **data}


class WeightOnlyOpValidationMixin:
    """For weight-only compressions: no default input/output specs, and active ones rejected."""

    @classmethod
    def get_default_input_spec(cls) -> dict:
        return {}

    @classmethod
    def get_default_output_spec(cls) -> dict:
        return {}

    @model_validator(mode="after")
    def validate_weight_only_op_constraint(self) -> Any:
        for key in ("op_input_spec", "op_output_spec"):
            if spec_is_active(getattr(self, key)):
                raise ValueError(
                    f"{type(self).__name__} does not support {key}. This is a weight-only "
                    f"compression type that only supports op_state_spec."
                )
        return self


class ModuleCompressionConfig(ConfigModel):
    """Compression of one module: op-level specs for its ops, overrides by op type and op name
    (regex), and module-level specs (module_state_spec overrides op state specs of the
    module's own tensors)."""

    op_input_spec: activation_specs(CompressionSpec)  # type: ignore[valid-type]
    op_output_spec: activation_specs(CompressionSpec)  # type: ignore[valid-type]
    op_state_spec: state_specs(CompressionSpec)  # type: ignore[valid-type]
    op_type_config: dict[str, OpCompressionConfig | None] = Field(default_factory=dict)
    op_name_config: dict[str, OpCompressionConfig | None] = Field(default_factory=dict)
    module_input_spec: activation_specs(CompressionSpec, none_to_empty) = Field(  # type: ignore[valid-type]
        default_factory=dict
    )
    module_output_spec: activation_specs(CompressionSpec, none_to_empty) = Field(  # type: ignore[valid-type]
        default_factory=dict
    )
    module_state_spec: module_state_specs(CompressionSpec) = Field(default_factory=dict)  # type: ignore[valid-type]

    op_config_cls: ClassVar[type[OpCompressionConfig]] = OpCompressionConfig

    # whether op_type_config keys are checked against the palettizable ops (see op_types)
    check_op_type_keys: ClassVar[bool] = False

    @field_validator("op_type_config", "op_name_config", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return none_to_empty(value)

    @field_validator("op_type_config", mode="before")
    @classmethod
    def _normalize_op_types(cls, value: Any) -> Any:
        if not cls.check_op_type_keys:
            return value
        return normalize_op_type_keys(none_to_empty(value), f"{cls.__name__}.op_type_config")

    @field_validator("op_name_config", mode="after")
    @classmethod
    def _check_op_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(
                    f"op_name_config key {pattern!r} is not a valid regex: {err}"
                ) from None
        return value

    @model_validator(mode="before")
    @classmethod
    def apply_defaults(cls, data: Any) -> Any:
        """Fill the op-level spec fields that were left out with the op config's defaults."""
        if not isinstance(data, dict):
            return data
        op = cls.op_config_cls
        defaults = {
            "op_input_spec": op.get_default_input_spec,
            "op_output_spec": op.get_default_output_spec,
            "op_state_spec": op.get_default_state_spec,
        }
        return {**{k: f() for k, f in defaults.items() if k not in data}, **data}

    @model_validator(mode="after")
    def _normalize_none_op_configs(self) -> Any:
        """A None op config means "disable this op type/name": store a disabled op config."""
        for name in ("op_type_config", "op_name_config"):
            configs = getattr(self, name)
            if any(v is None for v in configs.values()):
                disabled = self.disabled_op_config()
                self.__dict__[name] = {k: disabled if v is None else v for k, v in configs.items()}
        return self

    @classmethod
    def disabled_op_config(cls) -> OpCompressionConfig:
        """An op config that compresses nothing."""
        return cls.op_config_cls(op_input_spec=None, op_output_spec=None, op_state_spec=None)

    @classmethod
    def disabled(cls) -> Self:
        """A module config that compresses nothing (what a None module config stands for)."""
        return cls(
            op_input_spec=None,
            op_output_spec=None,
            op_state_spec=None,
            module_input_spec=None,
            module_output_spec=None,
            module_state_spec=None,
        )

    def for_children(self) -> Self:
        """The config a matched module passes to its children: everything but the
        module-level specs, which belong to the matched module's own boundary."""
        child = self.model_copy(deep=True)
        for name in ("module_input_spec", "module_output_spec", "module_state_spec"):
            child.__dict__[name] = {}
        return child

    def _get_fake_module_kwargs(self) -> dict[str, Any]:
        """Compressor-specific settings (fields beyond this base class)."""
        base = set(ModuleCompressionConfig.model_fields)
        return {k: getattr(self, k) for k in type(self).model_fields if k not in base}


class WeightOnlyModuleValidationMixin:
    """For weight-only compressions: active input/output specs (op- or module-level) rejected."""

    @model_validator(mode="after")
    def validate_weight_only_module_constraint(self) -> Any:
        for key in ("op_input_spec", "op_output_spec", "module_input_spec", "module_output_spec"):
            if spec_is_active(getattr(self, key)):
                raise ValueError(
                    f"{type(self).__name__} does not support {key}. This is a weight-only "
                    f"compression type that only supports op_state_spec and module_state_spec."
                )
        return self


def normalize_module_type(module_type: Any) -> str:
    """A module class or a fully qualified name -> the name (kept exactly as written)."""
    if isinstance(module_type, str):
        if "." not in module_type:
            raise ValueError(
                f"Expected fully-qualified name, got {module_type} (e.g. "
                f"'torch.nn.modules.linear.Linear', or pass the class)"
            )
        return module_type
    if isinstance(module_type, type) and issubclass(module_type, nn.Module):
        return qualified_name(module_type)
    raise TypeError(
        f"Keys in module_type_configs must be either fully-qualified strings or nn.Module "
        f"types, got {type(module_type)}"
    )


class CompressionConfig(ConfigModel):
    """Compression of a model: `module_name_configs` (regex, full match) > `module_type_configs`
    (exact class) > `global_config`; a matched module's config applies to its children too."""

    global_config: ModuleCompressionConfig | None = None
    module_type_configs: dict[str, ModuleCompressionConfig | None] = Field(default_factory=dict)
    module_name_configs: dict[str, ModuleCompressionConfig | None] = Field(default_factory=dict)

    module_config_cls: ClassVar[type[ModuleCompressionConfig]] = ModuleCompressionConfig
    _CONFIG_KEY: ClassVar[str] = "compression_config"
    _SPEC_KEY: ClassVar[str] = "compression_spec"

    @model_validator(mode="before")
    @classmethod
    def _apply_default_global_config(cls, data: Any) -> Any:
        """No global config given: the default one; given only module type/name configs:
        the disabled one (documented behaviour; coreai_opt 0.3.0 uses the default), with a
        warning saying so."""
        if not isinstance(data, dict) or "global_config" in data:
            return data
        given = [k for k in ("module_type_configs", "module_name_configs") if k in data]
        if not given:
            return {**data, "global_config": cls.module_config_cls()}
        warnings.warn(
            f"{cls.__name__}: only {' and '.join(given)} given, so modules they do not match "
            f"are left alone (documented behaviour). coreai_opt 0.3.0 would apply the default "
            f"{cls.module_config_cls.__name__}() to them; pass global_config= to choose.",
            UserWarning,
            stacklevel=4,
        )
        return {**data, "global_config": None}

    @field_validator("module_type_configs", "module_name_configs", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return none_to_empty(value)

    @field_validator("module_type_configs", mode="before")
    @classmethod
    def _normalize_module_types(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {normalize_module_type(k): v for k, v in value.items()}

    @field_validator("module_name_configs", mode="after")
    @classmethod
    def _check_patterns(cls, value: dict[str, Any]) -> dict[str, Any]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(
                    f"module_name_configs key {pattern!r} is not a valid regex: {err}"
                ) from None
        return value

    @model_validator(mode="after")
    def _normalize_none_module_configs(self) -> Any:
        """None module configs become disabled ones, so every entry is a config."""
        if self.global_config is None:
            self.__dict__["global_config"] = self.module_config_cls.disabled()
        for name in ("module_type_configs", "module_name_configs"):
            configs = getattr(self, name)
            if any(v is None for v in configs.values()):
                self.__dict__[name] = {
                    k: self.module_config_cls.disabled() if v is None else v
                    for k, v in configs.items()
                }
        return self

    @model_validator(mode="after")
    def _check_global_config(self) -> Any:
        g = self.global_config
        if g is not None and (g.module_input_spec or g.module_output_spec or g.module_state_spec):
            raise ValueError(
                "global_config cannot have module_input_spec, module_output_spec, or "
                "module_state_spec. These are only allowed in module_type_configs and "
                "module_name_configs."
            )
        return self

    # --- setters -----------------------------------------------------------------------------

    def _config_or_disabled(self, config: Any) -> Any:
        return self.module_config_cls.disabled() if config is None else config

    def set_global(self, config: Any) -> Self:
        """Set the config of modules no type/name config matches; None disables them."""
        self.global_config = self._config_or_disabled(config)
        return self

    def set_module_type(self, module_type: str | type[nn.Module], config: Any) -> Self:
        """Set (or replace) the config of a module class (exact type); None disables it."""
        key = normalize_module_type(module_type)
        self.module_type_configs = {
            **self.module_type_configs,
            key: self._config_or_disabled(config),
        }
        return self

    def set_module_name(self, module_name: str, config: Any) -> Self:
        """Set (or replace) the config of modules whose name fully matches the regex
        `module_name`; None disables them. Of several matching patterns the later wins."""
        self.module_name_configs = {
            **self.module_name_configs,
            module_name: self._config_or_disabled(config),
        }
        return self

    @staticmethod
    def _unpack_targets(targets: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(targets) == 1 and isinstance(targets[0], (list, tuple)):
            return tuple(targets[0])
        return targets

    @staticmethod
    def _validate_target(target: Any) -> None:
        if isinstance(target, str):
            return
        if isinstance(target, type):
            if issubclass(target, nn.Module):
                return
            raise TypeError(
                f"targets must be nn.Module subclasses or name strings, got {target.__name__}"
            )
        raise TypeError(
            f"targets must be module types or name strings, got {type(target).__name__}"
        )

    def _apply_target_config(self, target: Any, config: Any) -> None:
        if isinstance(target, type):
            self.set_module_type(target, config)
        else:
            self.set_module_name(target, config)

    def only_for(self, *targets: Any) -> Self:
        """Apply the global config only to these module types / name patterns (varargs or one
        list): the global config is disabled and copied onto each target."""
        targets = self._unpack_targets(targets)
        if not targets:
            raise ValueError("only_for requires at least one target")
        if self.global_config == self.module_config_cls.disabled():
            raise ValueError(
                "only_for requires a non-disabled global_config to redistribute as per-module "
                "overrides. If you've already called only_for or set_global(None), pass all "
                "targets in one only_for(...) call instead of chaining."
            )
        for target in targets:
            self._validate_target(target)
        spec = self.global_config
        self.global_config = self.module_config_cls.disabled()
        for target in targets:
            self._apply_target_config(target, spec.model_copy(deep=True))
        return self

    def without(self, *targets: Any) -> Self:
        """Disable these module types / name patterns (varargs or one list); none is a no-op."""
        targets = self._unpack_targets(targets)
        for target in targets:
            self._validate_target(target)
        for target in targets:
            self._apply_target_config(target, None)
        return self

    # --- lookups -----------------------------------------------------------------------------

    def get_module_config(self, name: str, module: nn.Module) -> Any:
        """coreai_opt's single-module lookup: the first name pattern (in declaration order)
        that fully matches, else the exact type's config, else the global config. Children
        inheriting a parent's config are not considered; `build_module_config_dict` is the
        resolution the compressors use."""
        for pattern, config in self.module_name_configs.items():
            if re.fullmatch(pattern, name):
                return config
        key = qualified_name(type(module))
        if key in self.module_type_configs:
            return self.module_type_configs[key]
        return self.global_config

    def build_module_config_dict(self, model: nn.Module) -> dict[Any, dict[str, Any]]:
        """{ConfigLevel: {module name: config}}: which config applies to every module, by the
        level that set it (see `coreai_opt_gpu.config.resolver.module_configs`)."""
        from coreai_opt_gpu.config.resolver import build_module_config_dict

        return build_module_config_dict(self, model)

    # --- dict / YAML -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """{root key: config}, YAML-safe (dtype names, registry keys), loadable by both
        packages."""
        return {self._CONFIG_KEY: self.model_dump(mode="json")}

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> Self:
        """Build from {root key: config} (the spec key coreai_opt also allows is ignored);
        RuntimeError for another key or a missing root key."""
        expected = {cls._CONFIG_KEY, cls._SPEC_KEY}
        for key in config_dict:
            if key not in expected:
                raise RuntimeError(
                    f"Found unexpected key '{key}' in config dict. Supported keys are "
                    f"{sorted(expected)}."
                )
        if cls._CONFIG_KEY not in config_dict:
            raise RuntimeError(
                f"Did not find '{cls._CONFIG_KEY}' in config dict. Expected keys: "
                f"{sorted(expected)}."
            )
        return cls(**config_dict[cls._CONFIG_KEY])

    @classmethod
    def from_yaml(cls, yml: IO[str] | str | Path) -> Self | None:
        """Build from a YAML file path or stream; an empty document warns and returns None."""
        if isinstance(yml, (str, Path)):
            data = yaml.safe_load(Path(yml).read_bytes())
        else:
            data = yaml.safe_load(yml)
        if data is None:
            warnings.warn(
                f"{cls.__name__}.from_yaml: empty YAML content, returning None instead of a "
                f"configuration object",
                stacklevel=2,
            )
            return None
        if not isinstance(data, dict):
            raise ValueError(f"Invalid YAML: expected dict, got {type(data)}.")
        return cls.from_dict(data)

    def to_yaml(self, path_or_stream: str | Path | IO[str] | None = None) -> str:
        """YAML text of `to_dict()` (ours; coreai_opt has none), also written to a path or
        stream when one is given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if isinstance(path_or_stream, (str, Path)):
            Path(path_or_stream).write_text(text)
        elif path_or_stream is not None:
            path_or_stream.write(text)
        return text


__all__ = [
    "CompressionConfig",
    "ModuleCompressionConfig",
    "OpCompressionConfig",
    "WeightOnlyModuleValidationMixin",
    "WeightOnlyOpValidationMixin",
    "normalize_module_type",
]
