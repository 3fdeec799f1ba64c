"""Pydantic building blocks shared by every spec and config class.

- `SpecModel`: immutable, unknown fields rejected (specs are values).
- `ConfigModel`: mutable with validation on assignment, unknown fields rejected (configs are
  edited through setters).
- `final`: a class decorator that makes subclassing a `TypeError`, as the API promises.
- `drop_neutral_upstream_keys`: coreai_opt writes a few keys that have no meaning here
  (`training_strategy_spec: {type: default}`, `pat_schedule: null`, ...). YAML files saved by it
  must still load, so those keys are accepted when they hold their neutral value and rejected
  with a clear error otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T", bound=type)


class SpecModel(BaseModel):
    """Immutable pydantic model that rejects unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    def model_dump_preserve_objects(self) -> dict[str, Any]:
        """Fields as a dict in which nested models (granularity, LUT spec) stay objects."""
        return {name: getattr(self, name) for name in type(self).model_fields}


class ConfigModel(BaseModel):
    """Mutable pydantic model, validated on assignment, that rejects unknown fields."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, arbitrary_types_allowed=True
    )


def final(cls: T) -> T:
    """Mark a class final: defining a subclass of it raises `TypeError`."""

    def refuse_subclass(subclass: type, **kwargs: Any) -> None:
        raise TypeError(f"{subclass.__name__} cannot subclass {cls.__name__} (marked final).")

    cls.__init_subclass__ = classmethod(refuse_subclass)  # type: ignore[assignment]
    return cls


def _is_empty(value: Any) -> bool:
    if value is None or value == {}:
        return True
    return isinstance(value, Mapping) and all(v is None for v in value.values())


# key -> predicate telling whether the value is the neutral one upstream writes.
UPSTREAM_NEUTRAL_KEYS: dict[str, Any] = {
    "training_strategy_spec": lambda v: v is None or v == {"type": "default"},
    "pat_schedule": lambda v: v is None,
    "qat_schedule": lambda v: v is None,
    "fake_quantize_cls": lambda v: v is None or "Default" in getattr(v, "__name__", str(v)),
    "preserved_attributes": lambda v: v is None,
    "kv_cache_quant_configs": lambda v: v is None,
    "execution_mode": lambda v: v is None or str(getattr(v, "value", v)).lower() == "graph",
}


def drop_neutral_upstream_keys(
    data: Any, owner: str, keys: tuple[str, ...], empty_keys: tuple[str, ...] = ()
) -> Any:
    """Remove upstream-only keys holding neutral values; reject them otherwise.

    `keys` are checked with `UPSTREAM_NEUTRAL_KEYS`; `empty_keys` must be empty (None, {} or a
    mapping of Nones), e.g. `op_input_spec` on a palettizer config.
    """
    if not isinstance(data, Mapping):
        return data
    cleaned = dict(data)
    for key in keys + empty_keys:
        if key not in cleaned:
            continue
        value = cleaned.pop(key)
        neutral = _is_empty(value) if key in empty_keys else UPSTREAM_NEUTRAL_KEYS[key](value)
        if not neutral:
            raise ValueError(
                f"{owner}.{key}={value!r} is not supported by coreai_opt_gpu; "
                f"only its neutral value (as coreai_opt writes by default) is accepted."
            )
    return cleaned
