"""The one place that decides which spec applies to a tensor of an op of a module.

Precedence, highest first:
- module config: `module_name_configs` (first regex, in insertion order, that fully matches the
  module's qualified name) > `module_type_configs` (the module's class, then its base classes)
  > `global_config`. A matching key whose value is None disables the module.
- inside the module config (for weights, `kind="state"`): `module_state_spec` >
  `op_name_config` (first regex that fully matches the op name) > `op_type_config` >
  `op_state_spec`. The first level that has an entry for the op decides; its dict is looked up
  by exact name, then by "*". A None at any level disables.

The palettizer and the quantizer both call `resolve_spec`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from coreai_opt_gpu.config.module_types import qualified_name
from coreai_opt_gpu.config.op_types import normalize_op_type

SpecKind = Literal["state", "input", "output"]


@dataclass(frozen=True)
class SpecSite:
    """Where a tensor sits: module, op and the tensor's name (state, input or output)."""

    module_name: str
    module_type: type
    op_type: str
    op_name: str
    name: str
    kind: SpecKind = "state"


def select_module_config(config: Any, module_name: str, module_type: type) -> Any | None:
    """The module-level config that applies to a module, or None when it is not compressed."""
    for pattern, module_config in config.module_name_configs.items():
        if re.fullmatch(pattern, module_name):
            return module_config
    for cls in module_type.__mro__:
        key = qualified_name(cls)
        if key in config.module_type_configs:
            return config.module_type_configs[key]
    return config.global_config


def lookup(specs: dict[str, Any] | None, name: str) -> Any | None:
    """specs[name], else specs['*'], else None; a None dict disables everything."""
    if specs is None:
        return None
    if name in specs:
        return specs[name]
    return specs.get("*")


def resolve_in_module(module_config: Any, site: SpecSite) -> Any | None:
    """The spec a module-level config gives to one tensor of one op (see module docstring)."""
    field = f"op_{site.kind}_spec"
    if site.kind == "state" and (
        site.name in module_config.module_state_spec or "*" in module_config.module_state_spec
    ):
        return lookup(module_config.module_state_spec, site.name)
    for pattern, op_config in module_config.op_name_config.items():
        if re.fullmatch(pattern, site.op_name):
            return None if op_config is None else lookup(getattr(op_config, field), site.name)
    op_type = normalize_op_type(site.op_type)
    if op_type in module_config.op_type_config:
        op_config = module_config.op_type_config[op_type]
        return None if op_config is None else lookup(getattr(op_config, field), site.name)
    return lookup(getattr(module_config, field), site.name)


def resolve_spec(config: Any, site: SpecSite) -> Any | None:
    """The spec that applies to the tensor at `site`, or None when it is left alone."""
    module_config = select_module_config(config, site.module_name, site.module_type)
    if module_config is None:
        return None
    return resolve_in_module(module_config, site)


def unmatched_module_keys(config: Any, model: Any) -> list[str]:
    """`module_name_configs` patterns and `module_type_configs` keys that match no module
    of `model` (a typo there would otherwise be ignored without a word)."""
    names = [name for name, _ in model.named_modules()]
    types = {qualified_name(cls) for _, m in model.named_modules() for cls in type(m).__mro__}
    unmatched = [
        f"module_name_configs[{p!r}]"
        for p in config.module_name_configs
        if not any(re.fullmatch(p, name) for name in names)
    ]
    unmatched += [
        f"module_type_configs[{k!r}]" for k in config.module_type_configs if k not in types
    ]
    return unmatched
