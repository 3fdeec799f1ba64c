"""Module-type keys of configs: fully qualified class names, matched exactly."""

from __future__ import annotations


def qualified_name(cls: type) -> str:
    """torch.nn.Linear -> 'torch.nn.modules.linear.Linear' (the key a config must use)."""
    return f"{cls.__module__}.{cls.__qualname__}"
