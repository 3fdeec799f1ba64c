"""Which weights of a model a config palettizes, with their op types and specs."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu.config.module_states import module_states
from coreai_opt_gpu.config.resolver import SpecSite, resolve_spec, select_module_config
from coreai_opt_gpu.palettization.layout import (
    IncompatibleWeightError,
    PaletteLayout,
    palette_layout,
)
from coreai_opt_gpu.palettization.spec import PalettizationSpec


@dataclass(frozen=True)
class WeightTarget:
    """One weight to palettize: where it lives, its spec and its block layout."""

    module_name: str
    module: nn.Module
    state_name: str
    spec: PalettizationSpec
    layout: PaletteLayout
    rounding_precision: int | None  # fast k-means mode of the module config, None when off

    @property
    def qualified_name(self) -> str:
        return f"{self.module_name}.{self.state_name}" if self.module_name else self.state_name

    @property
    def tensor(self) -> torch.Tensor:
        """The dense weight (the parametrization's original once the module is prepared)."""
        if parametrize.is_parametrized(self.module, self.state_name):
            return self.module.parametrizations[self.state_name].original
        return getattr(self.module, self.state_name)


def find_targets(
    model: nn.Module, config: object, functional: Sequence[tuple[str, str, str]] = ()
) -> list[WeightTarget]:
    """Every weight the config palettizes: module weights (`MODULE_STATES`) and the
    `functional` sites (module name, parameter name, op type) found by tracing; incompatible
    weights warn and stay dense."""
    targets = []
    sites = [
        (name, module, op_type, state)
        for name, module in model.named_modules()
        for op_type, state in module_states(module)
    ]
    known = {id(getattr(module, state)) for _, module, _, state in sites}
    for module_name, state, op_type in functional:
        module = model.get_submodule(module_name)
        if id(getattr(module, state)) not in known:
            sites.append((module_name, module, op_type, state))
    for name, module, op_type, state in sites:
        site = SpecSite(name, type(module), op_type, op_name=name, name=state)
        spec = resolve_spec(config, site)
        if spec is None:
            continue
        qualified = f"{name}.{state}" if name else state
        weight = getattr(module, state)
        try:
            layout = palette_layout(tuple(weight.shape), spec, op_type)
        except IncompatibleWeightError as err:
            warnings.warn(f"{qualified} left dense: {err}", stacklevel=2)
            continue
        module_config = select_module_config(config, name, type(module))
        fast = module_config.enable_fast_kmeans_mode and spec.cluster_dim == 1
        precision = module_config.rounding_precision if fast else None
        targets.append(WeightTarget(name, module, state, spec, layout, precision))
    return targets
