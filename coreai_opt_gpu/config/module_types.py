"""Module-type keys of configs: classes or dotted names, stored as fully qualified names."""

from __future__ import annotations

import sys
from typing import Any


def qualified_name(cls: type) -> str:
    """torch.nn.Linear -> 'torch.nn.modules.linear.Linear'."""
    return f"{cls.__module__}.{cls.__qualname__}"


def canonical_module_type(key: Any) -> str:
    """A class, or a dotted name of one, as its fully qualified name.

    A dotted alias such as 'torch.nn.Linear' is resolved through already imported modules only
    (no import side effects); a name that does not resolve is kept as written and matched as is.
    """
    if isinstance(key, type):
        return qualified_name(key)
    if not isinstance(key, str) or not key:
        raise TypeError(f"module type key must be a class or a dotted name, got {key!r}")
    module_name, _, attr = key.rpartition(".")
    target = getattr(sys.modules.get(module_name), attr, None)
    return qualified_name(target) if isinstance(target, type) else key


def canonical_type_keys(mapping: Any) -> Any:
    """Rewrite a {type-or-name: value} mapping with canonical keys (pydantic before-validator)."""
    if not isinstance(mapping, dict):
        return mapping
    return {canonical_module_type(key): value for key, value in mapping.items()}
