"""Weights that several modules share (tied weights): one palettization under every name.

A Parameter held by several modules (an embedding whose weight is also `lm_head.weight`) is
one tensor: `find_targets` lists it under each name, `shared_weights` groups those targets,
and `prepare` clusters it once and installs one `FakePalettize` on every owner, so the tie
holds through state_dict round trips and finalize.

The resolver gives such a tensor one spec (coreai_opt's priorities). `check_owners_agree`
adds what coreai_opt does not: each owner's own config must give the tensor the same spec
and PAT schedule (its `module_state_spec`, else the op spec of its own last palettizable call
of the tensor; an owner that calls such an op without a config, or whose spec leaves the
tensor out, says "dense"); owners that neither name nor call it have no say. Otherwise a
ValueError names every owner, what each gives and where that comes from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from coreai_opt_gpu.config.resolver import (
    ConfigLevel,
    last_matching,
    module_configs,
    op_state_specs,
    with_resolved_axis,
)
from coreai_opt_gpu.config.trace import OpTrace
from coreai_opt_gpu.palettization.targets import WeightTarget

LEVEL_NAMES = {
    ConfigLevel.MODULE_NAME: "module_name_configs",
    ConfigLevel.MODULE_TYPE: "module_type_configs",
    ConfigLevel.GLOBAL: "global_config",
}


@dataclass(frozen=True)
class SharedWeight:
    """One tensor to palettize and every (module, name) that holds it, in module order.
    `primary` is the target clustered (its qualified name keys results and sensitivities);
    it carries the schedule its owners agree on."""

    primary: WeightTarget
    targets: tuple[WeightTarget, ...]

    @property
    def names(self) -> list[str]:
        return [t.qualified_name for t in self.targets]


@dataclass(frozen=True)
class _Say:
    """What one owner's config gives the tensor, and where that comes from."""

    target: WeightTarget
    spec: Any
    schedule: Any
    source: str


def shared_weights(targets: Iterable[WeightTarget]) -> list[SharedWeight]:
    """Group targets by tensor identity (first appearance order); one group per tensor."""
    groups: dict[int, list[WeightTarget]] = {}
    for target in targets:
        groups.setdefault(id(target.tensor), []).append(target)
    return [SharedWeight(members[0], tuple(members)) for members in groups.values()]


def check_owners_agree(
    groups: list[SharedWeight], model: nn.Module, config: Any, trace: OpTrace
) -> list[SharedWeight]:
    """Raise ValueError when a shared tensor's owners disagree (see module docstring); return
    the groups with each primary carrying the agreed PAT schedule."""
    if all(len(g.targets) == 1 for g in groups):
        return groups
    choices = module_configs(config, model)
    checked = []
    for group in groups:
        if len(group.targets) == 1:
            checked.append(group)
            continue
        says = [s for t in group.targets if (s := _say(t, choices, trace)) is not None]
        verdicts: list[tuple[Any, Any]] = []
        for say in says:
            if (say.spec, say.schedule) not in verdicts:  # specs compare by value
                verdicts.append((say.spec, say.schedule))
        if len(verdicts) > 1:
            raise ValueError(_disagreement(group, says))
        schedule = next((s.schedule for s in says if s.spec is not None), None)
        if says:
            primary = dataclasses.replace(group.primary, pat_schedule=schedule)
            group = SharedWeight(primary, group.targets)
        checked.append(group)
    return checked


def _say(target: WeightTarget, choices: dict, trace: OpTrace) -> _Say | None:
    """The owner's own view of the tensor (None: it has no say)."""
    tensor = target.tensor
    calls = [
        c
        for c in trace.calls
        if c.module_name == target.module_name
        and c.op_type is not None
        and any(t is tensor for t in c.tensors)
    ]
    choice = choices.get(target.module_name)
    if choice is None:
        if not calls:
            return None
        where = f"module {target.module_name!r} has no config"
        return _Say(target, None, None, where)
    level = LEVEL_NAMES[choice.level]
    schedule = choice.config.pat_schedule
    op_type = calls[-1].op_type if calls else target.op_type
    spec, found = last_matching(choice.config.module_state_spec, [target.state_name])
    if found:
        spec = None if spec is None else with_resolved_axis(spec, op_type)
        return _Say(target, spec, schedule, f"module_state_spec of its {level} entry")
    if not calls:
        return None
    call = calls[-1]
    specs = op_state_specs(choice.config, call.op_name, call.op_type)
    spec, found = last_matching(specs, [target.state_name])
    spec = with_resolved_axis(spec, op_type) if found and spec is not None else None
    return _Say(target, spec, schedule, f"op {call.op_name!r} in its {level} entry")


def _disagreement(group: SharedWeight, says: list[_Say]) -> str:
    def spec_text(say: _Say) -> str:
        text = "None (left dense)" if say.spec is None else repr(say.spec)
        if say.schedule is not None:
            text += f" with {say.schedule!r}"
        return text

    lines = "; ".join(
        f"{s.target.module_name or '<model>'} gives {spec_text(s)} ({s.source})" for s in says
    )
    return (
        f"{', '.join(group.names)} are one tensor shared by modules "
        f"{[t.module_name for t in group.targets]}; it is palettized once, so its owners must "
        f"agree on its spec and PAT schedule, but {lines}. Give every owner that names or "
        f"uses it the same spec (None everywhere to leave it dense), e.g. with "
        f"config.set_module_name(...)"
    )
