"""String-keyed class registries: how specs name granularities, calculators and strategies.

`SomeBase.register("key")` decorates a subclass; `SomeBase.resolve("key" or cls)` returns the
class and raises a `ValueError` listing the registered keys otherwise. YAML files name classes
by these keys ("per_grouped_channel", "static", "minmax", "default"), as coreai_opt's do.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")
TYPE_KEY = "type"


class ClassRegistryMixin:
    """Gives every direct user of the mixin (and each subclass) its own `REGISTRY`."""

    REGISTRY: ClassVar[dict[str, Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.REGISTRY = {}

    @classmethod
    def register(cls, key: str) -> Callable[[T], T]:
        """Decorator: register a class under `key` (re-registering warns and replaces)."""

        def wrap(registered: T) -> T:
            if "REGISTRY" not in cls.__dict__:
                cls.REGISTRY = {}
            if key in cls.REGISTRY and cls.REGISTRY[key] is not registered:
                warnings.warn(
                    f"{cls.__name__}: key {key!r} was registered to "
                    f"{cls.REGISTRY[key].__name__}; it now names {registered.__name__}",
                    stacklevel=2,
                )
            cls.REGISTRY[key] = registered
            return registered

        return wrap

    @classmethod
    def list_registry_keys(cls) -> set[str]:
        return set(cls.REGISTRY)

    @classmethod
    def list_registry_values(cls) -> set[Any]:
        return set(cls.REGISTRY.values())

    @classmethod
    def get_class(cls, key: str) -> Any:
        """The class registered under `key`; KeyError naming the registry otherwise."""
        if key in cls.REGISTRY:
            return cls.REGISTRY[key]
        raise KeyError(f"No object is registered with key: {key} in registry {cls.__name__}.")

    @classmethod
    def registry_key(cls, registered: type) -> str | None:
        """The key a class is registered under, or None."""
        for key, value in cls.REGISTRY.items():
            if value is registered:
                return key
        return None

    @classmethod
    def resolve(cls, data: str | type) -> type:
        """A registered key or class -> the class; ValueError listing the keys otherwise."""
        if isinstance(data, str):
            if data in cls.REGISTRY:
                return cls.REGISTRY[data]
            raise ValueError(
                f"No class is registered with key: '{data}' in registry {cls.__name__}. "
                f"Available keys: {sorted(cls.REGISTRY)}"
            )
        if any(data is value for value in cls.REGISTRY.values()):
            return data
        name = getattr(data, "__name__", data)
        raise ValueError(
            f"{name} is not a registered class in {cls.__name__}. "
            f"Available keys: {sorted(cls.REGISTRY)}"
        )


class ConfigRegistryMixin(ClassRegistryMixin):
    """Registry of pydantic models that dicts name with a `type` key."""

    @classmethod
    def maybe_build_from_dict(cls, data: Any) -> Any:
        """{"type": key, **fields} -> the registered model; anything else unchanged."""
        if not isinstance(data, dict):
            return data
        if TYPE_KEY not in data:
            raise ValueError(
                f"Missing {TYPE_KEY} key in dict for {cls.__name__}; "
                f"allowed types: {sorted(cls.REGISTRY)}"
            )
        key = data[TYPE_KEY]
        if key not in cls.REGISTRY:
            raise ValueError(
                f"{cls.__name__} type {key!r} is not known; allowed types: {sorted(cls.REGISTRY)}"
            )
        return cls.REGISTRY[key](**{k: v for k, v in data.items() if k != TYPE_KEY})
