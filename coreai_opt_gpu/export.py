"""Export backends a palettized or quantized model can be finalized for.

`ExportBackend.MIL` and `ExportBackend.MLIR` (and `ExportBackend("mil")`, `("mlir")`) are
coreai_opt's deprecated names of `CoreML` and `CoreAI`: they still work and warn with a
`DeprecationWarning`. `ExportBackend._TORCH`, coreai_opt's private name of the plain-PyTorch
backend, is `ExportBackend.Torch` here (no warning: it is what coreai_opt code writes).
"""

from __future__ import annotations

import warnings
from enum import Enum, EnumMeta
from typing import TYPE_CHECKING, Any, ClassVar


class DeprecatedAliasEnumMeta(EnumMeta):
    """Enum metaclass for renamed members: `__deprecated_aliases__` maps an old member name to
    the current one; the old name works as attribute and (case-insensitive) as value, with a
    DeprecationWarning. An alias that shadows a member or names no member is a class error."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: Any, **kwargs: Any) -> Any:
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        for old, new in namespace.get("__deprecated_aliases__", {}).items():
            if new not in cls._member_map_:
                raise ValueError(f"{name}.__deprecated_aliases__: {old!r} -> unknown {new!r}")
            if old in cls._member_map_:
                raise ValueError(f"{name}.__deprecated_aliases__: {old!r} shadows a member")
        return cls

    def __getattr__(cls, name: str) -> Any:
        aliases = cls.__dict__.get("__deprecated_aliases__", {})
        if name in aliases:
            warnings.warn(
                f"{cls.__name__}.{name} is deprecated, use {cls.__name__}.{aliases[name]} "
                f"instead. The old name will be removed in a future release.",
                DeprecationWarning,
                stacklevel=2,
            )
            return cls[aliases[name]]
        return super().__getattr__(name)  # type: ignore[misc]

    def __call__(cls, value: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(value, *args, **kwargs)
        except ValueError:
            if args or kwargs or not isinstance(value, str):
                raise
            aliases = cls.__dict__.get("__deprecated_aliases__", {})
            for old, new in aliases.items():
                if old.lower() == value.lower():
                    member = cls[new]
                    warnings.warn(
                        f"{cls.__name__}({value!r}) is deprecated, use "
                        f"{cls.__name__}({member.value!r}) or {cls.__name__}.{new} instead. "
                        f"The old value will be removed in a future release.",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    return member
            raise


class ExportBackend(str, Enum, metaclass=DeprecatedAliasEnumMeta):
    """Where `finalize` sends a model: Core AI, Core ML, or plain PyTorch modules."""

    CoreAI = "coreai"
    CoreML = "coreml"
    Torch = "torch"
    _TORCH = "torch"  # coreai_opt's spelling of Torch: an alias, not a member

    __deprecated_aliases__: ClassVar[dict[str, str]] = {"MIL": "CoreML", "MLIR": "CoreAI"}

    if TYPE_CHECKING:
        MIL: ExportBackend
        """Deprecated: `ExportBackend.CoreML`."""
        MLIR: ExportBackend
        """Deprecated: `ExportBackend.CoreAI`."""

    @classmethod
    def _missing_(cls, value: object) -> ExportBackend | None:
        """coreai_opt's value of its private plain-torch member, "_torch", names Torch."""
        if isinstance(value, str) and value.lower() == "_torch":
            return cls.Torch
        return None
