"""Pydantic building blocks shared by the config classes.

- `ConfigModel`: mutable with validation on assignment, unknown fields rejected (configs are
  edited through setters).
- `final`: a class decorator that makes subclassing a `TypeError`, as the API promises.
- spec-dict field types: `{name or index: spec | None}` dicts in which `None` for the whole
  dict means "disable every tensor" (`{"*": None}`), as in coreai_opt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict

T = TypeVar("T", bound=type)
ALL_TENSORS = "*"


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


def none_to_disabled(value: Any) -> Any:
    """None -> {"*": None}: a spec dict that disables every tensor."""
    return {ALL_TENSORS: None} if value is None else value


def none_to_empty(value: Any) -> Any:
    """None -> {}: a dict with no entries (no opinion)."""
    return {} if value is None else value


def digit_keys_to_int(value: Any) -> Any:
    """{"0": spec} -> {0: spec} (YAML writes input/output indices as strings)."""
    if not isinstance(value, dict):
        return value
    converted: dict[Any, Any] = {}
    for key, item in value.items():
        new = int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else key
        if new in converted:
            raise ValueError(f"keys {new!r} and {key!r} both name tensor {new!r}")
        converted[new] = item
    return converted


def spec_is_active(specs: dict[Any, Any] | None) -> bool:
    """Whether a spec dict compresses any tensor ({} and {"*": None} do not)."""
    return bool(specs) and any(spec is not None for spec in specs.values())


def state_specs(spec_cls: type) -> Any:
    """Field type {state name or "*": spec | None}; None for the field means {"*": None}."""
    return Annotated[dict[str, spec_cls | None], BeforeValidator(none_to_disabled)]


def activation_specs(spec_cls: type, none: Any = none_to_disabled) -> Any:
    """Field type {input/output index, name or "*": spec | None}; digit strings -> ints."""
    return Annotated[
        dict[str | int, spec_cls | None],
        BeforeValidator(none),
        BeforeValidator(digit_keys_to_int),
    ]


def module_state_specs(spec_cls: type) -> Any:
    """Field type of module_state_spec; None for the field means {}."""
    return Annotated[dict[str, spec_cls | None], BeforeValidator(none_to_empty)]


# coreai_opt keys our quantizer has no use for, accepted when they hold their neutral value.
UPSTREAM_NEUTRAL_KEYS: dict[str, Any] = {
    "qat_schedule": lambda v: v is None,
    "preserved_attributes": lambda v: v is None,
    "kv_cache_quant_configs": lambda v: v is None,
    "execution_mode": lambda v: v is None or str(getattr(v, "value", v)).lower() == "graph",
}


def drop_neutral_upstream_keys(data: Any, owner: str, keys: tuple[str, ...]) -> Any:
    """Remove coreai_opt-only keys holding their neutral value; reject them otherwise."""
    if not isinstance(data, Mapping):
        return data
    cleaned = dict(data)
    for key in keys:
        if key in cleaned and not UPSTREAM_NEUTRAL_KEYS[key](cleaned.pop(key)):
            raise ValueError(
                f"{owner}.{key}={data[key]!r} is not supported by coreai_opt_gpu; only its "
                f"neutral value (as coreai_opt writes by default) is accepted."
            )
    return cleaned
