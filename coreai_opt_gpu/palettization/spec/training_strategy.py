"""Pluggable training-time behaviour of fake-palettized weights (inside `training_mode()`).

A `TrainingStrategySpec` (pydantic, registered by a `type` key, so YAML can name it) builds
its paired `TrainingStrategy`, whose `train_forward(module, weight)` returns the weight the
forward pass uses in training mode. The contract is coreai_opt's; strategies written for it
call `module.hard_assign(weight)`, which our fake-palettize module provides.

- "default" (`DefaultTrainingSpec`): the palettized weight stays frozen at its k-means value
  (no gradient reaches it); the rest of the network trains around it.
- "straight_through_centroids" (`CentroidTrainingSpec`, ours): the LUT is a parameter and
  learns from the gradient of the palettized weight (each centroid gets the sum of the
  gradients of the elements that use it; a quantized LUT is fake-quantized straight-through);
  every `reassign_every` steps, and when training mode ends, each element is re-assigned to
  its nearest centroid.

Besides `train_forward`, a strategy may implement the hooks `attach(module)` (when the module
is built), `on_step(module, weight, step)` (after every `KMeansPalettizer.step()`) and
`on_exit(module, weight)` (when `training_mode()` ends); they do nothing by default.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, model_serializer

from coreai_opt_gpu.config.registry import ConfigRegistryMixin


class TrainingStrategy(ABC):
    """How a fake-palettize module behaves in training mode."""

    @abstractmethod
    def train_forward(self, module: Any, weight: torch.Tensor) -> torch.Tensor:
        """The weight the forward pass uses in training mode (`weight` is the dense one)."""

    def attach(self, module: Any) -> None:  # noqa: B027 - an optional hook
        """Called once when the fake-palettize module is built."""

    def on_step(self, module: Any, weight: torch.Tensor, step: int) -> None:  # noqa: B027
        """Called after every palettizer `step()` inside `training_mode()` (optional hook)."""

    def on_exit(self, module: Any, weight: torch.Tensor) -> None:  # noqa: B027
        """Called when `training_mode()` ends (optional hook)."""


class _DefaultTrainingStrategy(TrainingStrategy):
    """Frozen: the k-means palettization of prepare, no gradient to the palettized weight."""

    def train_forward(self, module: Any, weight: torch.Tensor) -> torch.Tensor:
        return module.hard_assign(weight)


class TrainingStrategySpec(BaseModel, ConfigRegistryMixin):
    """Settings of a training strategy; `_strategy_cls` is the paired `TrainingStrategy`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    _strategy_cls: ClassVar[type[TrainingStrategy]]

    @model_serializer
    def _serialize(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in type(self).model_fields}
        key = TrainingStrategySpec.registry_key(type(self))
        if key is not None:
            data["type"] = key
        return data

    def build_strategy(self) -> TrainingStrategy:
        """The paired strategy, built from this spec's fields."""
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        return self._strategy_cls(**fields)


@TrainingStrategySpec.register("default")
class DefaultTrainingSpec(TrainingStrategySpec):
    """The default strategy (frozen palettized weights). No fields."""

    _strategy_cls = _DefaultTrainingStrategy


class CentroidTraining(TrainingStrategy):
    """Straight-through training of the LUT (see the module docstring)."""

    def __init__(self, reassign_every: int | None = 10) -> None:
        self.reassign_every = reassign_every

    def attach(self, module: Any) -> None:
        module.make_lut_trainable()

    def train_forward(self, module: Any, weight: torch.Tensor) -> torch.Tensor:
        return module.decode_from_lut(weight.dtype)

    def on_step(self, module: Any, weight: torch.Tensor, step: int) -> None:
        if self.reassign_every and step % self.reassign_every == 0:
            module.reassign_indices(weight)

    def on_exit(self, module: Any, weight: torch.Tensor) -> None:
        module.reassign_indices(weight)


@TrainingStrategySpec.register("straight_through_centroids")
class CentroidTrainingSpec(TrainingStrategySpec):
    """Ours: the LUT learns; indices re-assigned every `reassign_every` steps (None: only
    when training mode ends)."""

    reassign_every: int | None = Field(default=10, ge=1)

    _strategy_cls = CentroidTraining


def strategy_spec_from_data(data: Any) -> Any:
    """A strategy spec object or dict ({"type": ...}) -> the spec (pydantic validator)."""
    return TrainingStrategySpec.maybe_build_from_dict(data)


__all__ = [
    "CentroidTraining",
    "CentroidTrainingSpec",
    "DefaultTrainingSpec",
    "TrainingStrategy",
    "TrainingStrategySpec",
]
