"""Which weights of a model a config palettizes, with their op types and specs."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu.config.resolver import SpecSite, resolve_spec, select_module_config
from coreai_opt_gpu.palettization.layout import (
    IncompatibleWeightError,
    PaletteLayout,
    palette_layout,
)
from coreai_opt_gpu.palettization.spec import PalettizationSpec

# module class -> (op type, state name) of each tensor the module feeds to an op. Biases are
# listed too: configs name them ("bias", or "*"); the default config names only weights.
MODULE_STATES: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    **{
        cls: ((op, "weight"), (op, "bias"))
        for cls, op in (
            (nn.Linear, "linear"),
            (nn.Conv1d, "conv1d"),
            (nn.Conv2d, "conv2d"),
            (nn.Conv3d, "conv3d"),
            (nn.ConvTranspose1d, "conv_transpose1d"),
            (nn.ConvTranspose2d, "conv_transpose2d"),
            (nn.ConvTranspose3d, "conv_transpose3d"),
        )
    },
    nn.Embedding: (("embedding", "weight"),),
    # attention projects q, k, v with one linear call on in_proj_weight (or three, when the
    # key/value sizes differ); out_proj is an nn.Linear of its own
    nn.MultiheadAttention: tuple(
        ("linear", name)
        for name in (
            "in_proj_weight",
            "q_proj_weight",
            "k_proj_weight",
            "v_proj_weight",
            "in_proj_bias",
        )
    ),
}


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


def module_states(module: nn.Module) -> tuple[tuple[str, str], ...]:
    """(op type, state name) of the module's palettizable weights that exist."""
    for cls in type(module).__mro__:
        if cls in MODULE_STATES:
            return tuple(
                (op, state)
                for op, state in MODULE_STATES[cls]
                if isinstance(getattr(module, state, None), torch.Tensor)
            )
    return ()


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
