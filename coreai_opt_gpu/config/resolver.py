"""The one place that decides which spec applies to which tensor (coreai_opt 0.3.0's rules).

Module configs (`module_configs`, `build_module_config_dict`):
- Levels, highest first: `module_name_configs` (regex, full match against the module's name or
  any name it is registered under), `module_type_configs` (the module's exact class, as a
  fully qualified name), `global_config`.
- A matched module's config applies to its children too, minus the module-level specs
  (`module_*_spec`), unless a child is matched at the same or a higher level itself.
- Within a level, the later-declared key wins (also over a nearer match of an earlier key);
  for one key, a module's own match wins over its ancestor's.

Tensor specs (`resolve_states`), from the ops a forward calls (`config.trace`):
- An op is named `<module>.<function>[_<i>]` and typed by its function ("linear", "conv2d",
  ..., "multi_head_attention_forward"); in the calling module's config the later matching
  `op_name_config` regex wins, else its `op_type_config[op type]`, else its `op_state_spec`.
  Spec dicts are looked up by the tensor's attribute names (the later matching key wins),
  else "*"; a None value disables.
- `module_state_spec` of a module that owns the tensor beats any op spec. Ops that are not
  palettizable (`embedding`, ...) reach tensors only through it, and only when the calling
  module or one of its ancestors has module-level specs.
- A tensor several modules use gets the spec of the highest-priority module (levels in the
  order above, modules in the order their level assigned them; ties: the later call).

`resolve_spec(config, site)` resolves one site without a model (for the Quantizer): name
patterns against the module's name and its ancestors' names, the exact type, the global config.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from torch import nn

from coreai_opt_gpu.config.base import ALL_TENSORS
from coreai_opt_gpu.config.module_types import qualified_name
from coreai_opt_gpu.config.op_types import DEFAULT_CHANNEL_AXIS, normalize_op_type
from coreai_opt_gpu.config.trace import OpTrace

SpecKind = Literal["state", "input", "output"]


class ConfigLevel(Enum):
    """Where a module's config came from, highest priority first."""

    MODULE_NAME = 1
    MODULE_TYPE = 2
    GLOBAL = 3

    @classmethod
    def priority_order(cls) -> list[ConfigLevel]:
        return list(cls)


def last_matching(specs: Mapping[Any, Any] | None, names: Iterable[Any]) -> tuple[Any, bool]:
    """(value, found): the last key of `specs` in `names`, else "*", else (None, False)."""
    if not specs:
        return None, False
    wanted = set(names)
    found, value = False, None
    for key, item in specs.items():
        if key in wanted:
            found, value = True, item
    if found:
        return value, True
    if ALL_TENSORS in specs:
        return specs[ALL_TENSORS], True
    return None, False


def _aliases(model: nn.Module) -> tuple[dict[str, list[str]], dict[int, str]]:
    """Canonical module name -> every name it is registered under; id -> canonical name."""
    canonical: dict[int, str] = {}
    names: dict[str, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) not in canonical:
            canonical[id(module)] = name
            names[name] = [name]
        else:
            names[canonical[id(module)]].append(name)
    return names, canonical


def build_module_config_dict(config: Any, model: nn.Module) -> dict[ConfigLevel, dict[str, Any]]:
    """{level: {module name: config}} for every module of `model` (see the module docstring);
    insertion order within a level is the modules' priority order."""
    result: dict[ConfigLevel, dict[str, Any]] = {level: {} for level in ConfigLevel}
    modules = list(dict(model.named_modules()).items())
    all_names, canonical = _aliases(model)
    visited: set[int] = set()

    def assign(name: str, module: nn.Module, module_config: Any, level: ConfigLevel) -> None:
        name = canonical.get(id(module), name)
        if id(module) in visited:
            return
        visited.add(id(module))
        result[level][name] = module_config
        child_config = module_config.for_children()
        for child_name, child in module.named_children():
            assign(f"{name}.{child_name}" if name else child_name, child, child_config, level)

    def apply(entries: Iterable[tuple[str, Any]], level: ConfigLevel, matches: Any) -> None:
        for key, module_config in entries:
            for name, module in reversed(modules):  # children before their parents
                if any(matches(key, alias, module) for alias in all_names.get(name, [name])):
                    assign(name, module, module_config, level)

    apply(
        reversed(config.module_name_configs.items()),
        ConfigLevel.MODULE_NAME,
        lambda key, name, _: re.fullmatch(key, name) is not None,
    )
    apply(
        reversed(config.module_type_configs.items()),
        ConfigLevel.MODULE_TYPE,
        lambda key, _, module: qualified_name(type(module)) == key,
    )
    apply([("", config.global_config)], ConfigLevel.GLOBAL, lambda *_: True)
    return result


@dataclass(frozen=True)
class ModuleChoice:
    """The config that applies to one module, the level that set it and its priority
    (0 = highest)."""

    config: Any
    level: ConfigLevel
    priority: int


def module_configs(config: Any, model: nn.Module) -> dict[str, ModuleChoice]:
    """Module name -> the config that applies to it (see `build_module_config_dict`)."""
    choices: dict[str, ModuleChoice] = {}
    priority = 0
    for level, entries in build_module_config_dict(config, model).items():
        for name, module_config in entries.items():
            if module_config is not None and name not in choices:
                choices[name] = ModuleChoice(module_config, level, priority)
            priority += 1
    return choices


def _has_module_level_specs(module_config: Any) -> bool:
    return bool(
        module_config.module_input_spec
        or module_config.module_output_spec
        or module_config.module_state_spec
    )


def _module_spec_scope(model: nn.Module, choices: Mapping[str, ModuleChoice]) -> set[str]:
    """Modules that have, or descend from a module that has, module-level specs."""
    scope: set[str] = set()

    def walk(name: str, module: nn.Module, inherited: bool) -> None:
        choice = choices.get(name)
        has = inherited or (choice is not None and _has_module_level_specs(choice.config))
        if has:
            scope.add(name)
        for child_name, child in module.named_children():
            walk(f"{name}.{child_name}" if name else child_name, child, has)

    walk("", model, False)
    return scope


def op_state_specs(module_config: Any, op_name: str, op_type: str) -> Mapping[str, Any] | None:
    """The state spec dict a module config gives an op: the later matching op_name_config,
    else op_type_config[op type], else op_state_spec."""
    for pattern, op_config in reversed(module_config.op_name_config.items()):
        if re.fullmatch(pattern, op_name):
            return op_config.op_state_spec
    for key, op_config in reversed(module_config.op_type_config.items()):
        if key == op_type:
            return op_config.op_state_spec
    return module_config.op_state_spec


@dataclass(frozen=True)
class ResolvedState:
    """The spec one model tensor gets, the module config that gave it (whose compressor
    settings apply, e.g. fast k-means mode) and the op type of the call that decided it."""

    spec: Any
    module_config: Any
    op_type: str


def resolve_states(config: Any, model: nn.Module, trace: OpTrace) -> dict[int, ResolvedState]:
    """id(tensor) -> its resolved spec, for every model tensor the config compresses."""
    choices = module_configs(config, model)
    scope = _module_spec_scope(model, choices)
    owners: dict[int, list[str]] = {}
    local_names: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for state_name, tensor in (
            *module.named_parameters(recurse=False, remove_duplicate=False),
            *module.named_buffers(recurse=False, remove_duplicate=False),
        ):
            owners.setdefault(id(tensor), [])
            if name not in owners[id(tensor)]:
                owners[id(tensor)].append(name)
            local_names.setdefault(id(tensor), [])
            if state_name not in local_names[id(tensor)]:
                local_names[id(tensor)].append(state_name)

    def priority(name: str) -> float:
        choice = choices.get(name)
        return math.inf if choice is None else choice.priority

    decided: dict[int, tuple[ResolvedState | None, float]] = {}
    for call in trace.calls:
        if call.op_type is None and call.module_name not in scope:
            continue
        choice = choices.get(call.module_name)
        specs = None
        if choice is not None and call.op_type is not None:
            specs = op_state_specs(choice.config, call.op_name, call.op_type)
        rank = priority(call.module_name)
        op_type = call.op_type or call.function
        for tensor in call.tensors:
            key = id(tensor)
            names = local_names.get(key, [])
            if key in decided and rank > decided[key][1]:
                continue
            if key not in decided:
                by_module = _module_state_spec(owners.get(key, []), names, choices, priority)
                if by_module is not None:
                    spec, owner_config = by_module
                    state = None if spec is None else ResolvedState(spec, owner_config, op_type)
                    decided[key] = (state, -1.0)
                    continue
            spec, _ = last_matching(specs, names)
            state = None if spec is None else ResolvedState(spec, choice.config, op_type)
            decided[key] = (state, rank)
    return {key: state for key, (state, _) in decided.items() if state is not None}


def _module_state_spec(
    owners: list[str],
    names: list[str],
    choices: Mapping[str, ModuleChoice],
    priority: Any,
) -> tuple[Any, Any] | None:
    """(spec or None, owner config) from the highest-priority owner whose module_state_spec
    names the tensor; None when none does."""
    for owner in sorted(owners, key=priority):
        choice = choices.get(owner)
        if choice is None or not choice.config.module_state_spec:
            continue
        spec, found = last_matching(choice.config.module_state_spec, names)
        if found:
            return spec, choice.config
    return None


def with_resolved_axis(spec: Any, op_type: str) -> Any:
    """The spec with a per-grouped-channel `axis=None` set to the op's default axis (0; 1 for
    transposed convolutions), as coreai_opt does when it builds the fake-palettize module."""
    granularity = getattr(spec, "granularity", None)
    if granularity is None or getattr(granularity, "type", None) != "per_grouped_channel":
        return spec
    if granularity.axis is not None:
        return spec
    axis = DEFAULT_CHANNEL_AXIS.get(normalize_op_type(op_type), 0)
    return spec.model_copy(update={"granularity": granularity.model_copy(update={"axis": axis})})


# --- single-site resolution (the Quantizer) ---------------------------------------------------


@dataclass(frozen=True)
class SpecSite:
    """Where a tensor sits: module, op and the tensor's name (state, input or output)."""

    module_name: str
    module_type: type
    op_type: str
    op_name: str
    name: str
    kind: SpecKind = "state"


def _ancestors(name: str) -> list[str]:
    """'a.b.c' -> ['a.b.c', 'a.b', 'a', '']."""
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(len(parts), -1, -1)]


def select_module_config(config: Any, module_name: str, module_type: type) -> Any | None:
    """The module config for one module known only by name and type: the later name pattern
    matching the module or (nearest first) an ancestor, else the exact type, else global."""
    for pattern, module_config in reversed(config.module_name_configs.items()):
        for i, name in enumerate(_ancestors(module_name)):
            if re.fullmatch(pattern, name):
                return module_config if i == 0 else module_config.for_children()
    key = qualified_name(module_type)
    if key in config.module_type_configs:
        return config.module_type_configs[key]
    return config.global_config


def resolve_in_module(module_config: Any, site: SpecSite) -> Any | None:
    """The spec a module config gives one tensor of one op (module_state_spec for states,
    then the later matching op_name_config, op_type_config, the op-level dict). An input or
    output named by a digit string ("0") also matches the integer key (0)."""
    names: list[Any] = [site.name]
    if site.name.isascii() and site.name.isdigit():
        names.append(int(site.name))
    if site.kind == "state":
        spec, found = last_matching(module_config.module_state_spec, names)
        if found:
            return spec
    field = f"op_{site.kind}_spec"
    for pattern, op_config in reversed(module_config.op_name_config.items()):
        if re.fullmatch(pattern, site.op_name):
            return last_matching(getattr(op_config, field), names)[0]
    op_type = normalize_op_type(site.op_type)
    if op_type in module_config.op_type_config:
        return last_matching(getattr(module_config.op_type_config[op_type], field), names)[0]
    return last_matching(getattr(module_config, field), names)[0]


def resolve_spec(config: Any, site: SpecSite) -> Any | None:
    """The spec that applies to the tensor at `site`, or None when it is left alone."""
    module_config = select_module_config(config, site.module_name, site.module_type)
    if module_config is None:
        return None
    return resolve_in_module(module_config, site)


def unmatched_module_keys(config: Any, model: nn.Module) -> list[str]:
    """`module_name_configs` patterns and `module_type_configs` keys that match no module of
    `model` (a typo there would otherwise be ignored without a word)."""
    names = [name for name, _ in model.named_modules(remove_duplicate=False)]
    types = {qualified_name(type(m)) for m in model.modules()}
    unmatched = [
        f"module_name_configs[{p!r}]"
        for p in config.module_name_configs
        if not any(re.fullmatch(p, name) for name in names)
    ]
    for key in config.module_type_configs:
        if key not in types:
            hint = _type_hint(key, model)
            unmatched.append(f"module_type_configs[{key!r}]{hint}")
    return unmatched


def _type_hint(key: str, model: nn.Module) -> str:
    """' (did you mean ...?)' when a model class has the same short name as `key`."""
    short = key.rsplit(".", 1)[-1]
    similar = sorted({qualified_name(type(m)) for m in model.modules()} - {key})
    similar = [name for name in similar if name.rsplit(".", 1)[-1] == short]
    return f" (did you mean {similar[0]!r}? keys match the exact class)" if similar else ""
