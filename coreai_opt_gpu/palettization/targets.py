"""Which weights of a model a config palettizes, with their op types and specs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from coreai_opt_gpu.config.resolver import SpecSite, resolve_spec, select_module_config
from coreai_opt_gpu.palettization.layout import (
    IncompatibleWeightError,
    PaletteLayout,
    palette_layout,
)
from coreai_opt_gpu.palettization.spec import PalettizationSpec

# module class -> op type, for modules whose `weight` is the op's weight.
MODULE_OP_TYPES: dict[type[nn.Module], str] = {
    nn.Linear: "linear",
    nn.Conv1d: "conv1d",
    nn.Conv2d: "conv2d",
    nn.Conv3d: "conv3d",
    nn.ConvTranspose1d: "conv_transpose1d",
    nn.ConvTranspose2d: "conv_transpose2d",
    nn.ConvTranspose3d: "conv_transpose3d",
    nn.Embedding: "embedding",
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
        return getattr(self.module, self.state_name)


def op_type_of(module: nn.Module) -> str | None:
    for cls in type(module).__mro__:
        if cls in MODULE_OP_TYPES:
            return MODULE_OP_TYPES[cls]
    return None


def find_targets(model: nn.Module, config: object) -> list[WeightTarget]:
    """Every module weight the config palettizes; incompatible ones warn and stay dense."""
    targets = []
    for name, module in model.named_modules():
        op_type = op_type_of(module)
        if op_type is None:
            continue
        site = SpecSite(name, type(module), op_type, op_name=name, name="weight")
        spec = resolve_spec(config, site)
        if spec is None:
            continue
        weight = module.weight
        try:
            layout = palette_layout(tuple(weight.shape), spec, op_type)
        except IncompatibleWeightError as err:
            warnings.warn(f"{name}.weight left dense: {err}", stacklevel=2)
            continue
        module_config = select_module_config(config, name, type(module))
        fast = module_config.enable_fast_kmeans_mode and spec.cluster_dim == 1
        precision = module_config.rounding_precision if fast else None
        targets.append(WeightTarget(name, module, "weight", spec, layout, precision))
    return targets
