"""Which weights of a model a config palettizes, with their specs and block layouts.

`resolve_weights` applies the resolver (`coreai_opt_gpu.config.resolver`) to the ops of a
forward (`config.trace.trace_ops`) or, without example inputs, to the ops standard modules
call (`static_ops`); `find_targets` adds each weight's block layout and drops, with a warning,
the weights the layout cannot split.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu.config.resolver import module_configs, resolve_states, with_resolved_axis
from coreai_opt_gpu.config.trace import OpTrace, static_ops
from coreai_opt_gpu.palettization.layout import (
    IncompatibleWeightError,
    PaletteLayout,
    palette_layout,
)
from coreai_opt_gpu.palettization.spec import PalettizationSpec


@dataclass(frozen=True)
class ResolvedWeight:
    """A weight and the spec it resolves to (axis resolved), before any shape check."""

    module_name: str
    module: nn.Module
    state_name: str
    spec: PalettizationSpec
    op_type: str  # the op of the call that decided the spec ("linear", "embedding", ...)
    module_config: Any  # the module config that gave the spec (fast k-means settings)
    pat_schedule: Any  # the schedule of the owning module's config

    @property
    def qualified_name(self) -> str:
        return f"{self.module_name}.{self.state_name}" if self.module_name else self.state_name


@dataclass(frozen=True)
class WeightTarget:
    """One weight to palettize: where it lives, its spec and its block layout."""

    module_name: str
    module: nn.Module
    state_name: str
    spec: PalettizationSpec
    layout: PaletteLayout
    rounding_precision: int | None  # fast k-means mode of the module config, None when off
    op_type: str = "linear"
    pat_schedule: Any = None

    @property
    def qualified_name(self) -> str:
        return f"{self.module_name}.{self.state_name}" if self.module_name else self.state_name

    @property
    def tensor(self) -> torch.Tensor:
        """The dense weight (the parametrization's original once the module is prepared)."""
        if parametrize.is_parametrized(self.module, self.state_name):
            return self.module.parametrizations[self.state_name].original
        return getattr(self.module, self.state_name)


def resolve_weights(
    model: nn.Module, config: Any, trace: OpTrace | None = None
) -> list[ResolvedWeight]:
    """Every model tensor the config palettizes, in module order, with its spec."""
    trace = static_ops(model) if trace is None else trace
    states = resolve_states(config, model, trace)
    choices = module_configs(config, model)
    resolved = []
    for name, module in model.named_modules():
        for state_name, tensor in (
            *module.named_parameters(recurse=False, remove_duplicate=False),
            *module.named_buffers(recurse=False, remove_duplicate=False),
        ):
            state = states.get(id(tensor))
            if state is None:
                continue
            choice = choices.get(name)
            schedule = None if choice is None else choice.config.pat_schedule
            spec = with_resolved_axis(state.spec, state.op_type)
            resolved.append(
                ResolvedWeight(
                    name, module, state_name, spec, state.op_type, state.module_config, schedule
                )
            )
    return resolved


def find_targets(model: nn.Module, config: Any, trace: OpTrace | None = None) -> list[WeightTarget]:
    """The weights to palettize with their layouts; incompatible ones warn and stay dense."""
    targets = []
    for weight in resolve_weights(model, config, trace):
        tensor = getattr(weight.module, weight.state_name)
        try:
            layout = palette_layout(tuple(tensor.shape), weight.spec, weight.op_type)
        except IncompatibleWeightError as err:
            warnings.warn(f"{weight.qualified_name} left dense: {err}", stacklevel=2)
            continue
        fast = weight.module_config.enable_fast_kmeans_mode and weight.spec.cluster_dim == 1
        precision = weight.module_config.rounding_precision if fast else None
        targets.append(
            WeightTarget(
                weight.module_name,
                weight.module,
                weight.state_name,
                weight.spec,
                layout,
                precision,
                weight.op_type,
                weight.pat_schedule,
            )
        )
    return targets
