"""Behaviour shared by the model-level configs (`KMeansPalettizerConfig`, `QuantizerConfig`).

Setters that return the config for chaining, and the dict/YAML round trip under one root key
(`kmeans_palettization_config`, `quantization_config`). Also the key validators that module
configs of both families use.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import IO, Annotated, Any, ClassVar

import yaml
from pydantic import AfterValidator, BeforeValidator
from typing_extensions import Self

from coreai_opt_gpu.config.module_types import canonical_module_type, canonical_type_keys
from coreai_opt_gpu.config.op_types import normalize_op_type


def check_op_name_patterns(mapping: dict[str, Any], field: str) -> dict[str, Any]:
    """Reject keys that are not valid regular expressions, naming the field and the key."""
    for pattern in mapping:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"{field} key {pattern!r} is not a valid regex: {err}") from None
    return mapping


def normalize_op_type_keys(mapping: Any) -> Any:
    """{'aten.linear.default': cfg} -> {'linear': cfg}; unknown op types raise ValueError."""
    if not isinstance(mapping, dict):
        return mapping
    return {normalize_op_type(key): value for key, value in mapping.items()}


def configs_by_op_type(config_cls: type) -> Any:
    """Field type {op type: config | None}, keys normalized ('aten.linear.default' -> 'linear')."""
    return Annotated[dict[str, config_cls | None], BeforeValidator(normalize_op_type_keys)]


def configs_by_regex(config_cls: type, field: str) -> Any:
    """Field type {regex: config | None}, keys checked to compile."""
    check = partial(check_op_name_patterns, field=field)
    return Annotated[dict[str, config_cls | None], AfterValidator(check)]


def configs_by_module_type(config_cls: type) -> Any:
    """Field type {module class or dotted name: config | None}, keys fully qualified."""
    return Annotated[dict[str, config_cls | None], BeforeValidator(canonical_type_keys)]


def defaulted_global(data: Any, default_factory: Any) -> Any:
    """Add a default `global_config` only when no field at all was given (the documented rule:
    a config of only module_type/module_name configs leaves other modules alone)."""
    fields = ("global_config", "module_type_configs", "module_name_configs")
    if isinstance(data, dict) and not any(key in data for key in fields):
        return {**data, "global_config": default_factory()}
    return data


class CompressionConfigMixin:
    """Setters and dict/YAML IO for a config with global/module-type/module-name parts."""

    root_key: ClassVar[str]

    global_config: Any
    module_type_configs: dict[str, Any]
    module_name_configs: dict[str, Any]

    def set_global(self, config: Any) -> Self:
        """Set the config of every module not matched by type or name; None disables them."""
        self.global_config = config
        return self

    def set_module_type(self, module_type: type | str, config: Any) -> Self:
        """Set the config of modules of a class (or its fully qualified name); None disables."""
        key = canonical_module_type(module_type)
        self.module_type_configs = {**self.module_type_configs, key: config}
        return self

    def set_module_name(self, pattern: str, config: Any) -> Self:
        """Set the config of modules whose qualified name fully matches a regex; None disables."""
        self.module_name_configs = {**self.module_name_configs, pattern: config}
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe dict: {root_key: {...}}."""
        return {self.root_key: self.model_dump(mode="json")}  # type: ignore[attr-defined]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a dict as written by `to_dict` (the root key is required)."""
        if not isinstance(data, dict) or cls.root_key not in data:
            found = list(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"{cls.__name__}.from_dict expects a dict with key {cls.root_key!r}, got {found}"
            )
        return cls.model_validate(data[cls.root_key] or {})  # type: ignore[attr-defined]

    def to_yaml(self, path_or_stream: str | Path | IO[str] | None = None) -> str:
        """YAML text of `to_dict()`, also written to a path or stream when one is given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if isinstance(path_or_stream, (str, Path)):
            Path(path_or_stream).write_text(text)
        elif path_or_stream is not None:
            path_or_stream.write(text)
        return text

    @classmethod
    def from_yaml(cls, path_or_stream: str | Path | IO[str]) -> Self | None:
        """Build from a YAML file or stream; an empty document warns and returns None."""
        if isinstance(path_or_stream, (str, Path)):
            with open(path_or_stream) as stream:
                data = yaml.safe_load(stream)
        else:
            data = yaml.safe_load(path_or_stream)
        if data is None:
            warnings.warn(
                f"{cls.__name__}.from_yaml: the YAML is empty; no config was built", stacklevel=2
            )
            return None
        if not isinstance(data, dict):
            raise ValueError(
                f"{cls.__name__}.from_yaml expects a mapping at the top level, "
                f"got {type(data).__name__}"
            )
        return cls.from_dict(data)


def iter_specs(module_config: Any, field: str) -> Iterable[tuple[str, Any]]:
    """(where, spec) for every spec of one kind in a module config, op configs included."""
    for name, spec in (getattr(module_config, field) or {}).items():
        yield f"{field}[{name!r}]", spec
    for mapping_field in ("op_type_config", "op_name_config"):
        for key, op_config in getattr(module_config, mapping_field).items():
            for name, spec in (getattr(op_config, field, None) or {}).items():
                yield f"{mapping_field}[{key!r}].{field}[{name!r}]", spec
