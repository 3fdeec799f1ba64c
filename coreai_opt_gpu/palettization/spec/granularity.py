"""Palettization granularities: one LUT per tensor, or one per group of channels.

Dicts name them by a `type` key (`{"type": "per_grouped_channel", "axis": 0,
"group_size": 16}`), which their dumps carry too, as coreai_opt's do.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_serializer

from coreai_opt_gpu.config.registry import ConfigRegistryMixin


class IncompatibleGranularityError(ValueError):
    """A tensor cannot be split by a granularity (axis missing, size not divisible)."""


class PalettizationGranularity(BaseModel, ConfigRegistryMixin):
    """Base of the palettization granularities (registered by their `type` key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    axis: int | None = None

    @model_serializer
    def _serialize(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in type(self).model_fields}
        key = PalettizationGranularity.registry_key(type(self))
        if key is not None:
            data["type"] = key
        return data

    @property
    def type(self) -> str:
        """The registry key: "per_tensor" or "per_grouped_channel"."""
        return PalettizationGranularity.registry_key(type(self)) or type(self).__name__

    def num_blocks_to_cluster(self, weight: torch.Tensor) -> int:
        """How many LUTs a weight gets."""
        raise NotImplementedError

    def get_blocks_to_cluster(self, weight: torch.Tensor) -> list[torch.Tensor]:
        """The weight's slices that get one LUT each."""
        raise NotImplementedError


@PalettizationGranularity.register("per_tensor")
class PerTensorGranularity(PalettizationGranularity):
    """One LUT for the whole tensor."""

    axis: Literal[None] = None

    def num_blocks_to_cluster(self, weight: torch.Tensor) -> int:
        return 1

    def get_blocks_to_cluster(self, weight: torch.Tensor) -> list[torch.Tensor]:
        return [weight]


@PalettizationGranularity.register("per_grouped_channel")
class PerGroupedChannelGranularity(PalettizationGranularity):
    """One LUT per `group_size` channels along `axis` (0 or 1).

    `axis=None` means the op's default axis: 0 for linear and convolutions, 1 for transposed
    convolutions (whose weight is [in, out, ...]); it is resolved when the weight's op is known.
    """

    axis: Annotated[int | None, Field(default=None, ge=0, le=1)]
    group_size: Annotated[int, Field(gt=0)]

    def _checked_axis(self, weight: torch.Tensor) -> int:
        if self.axis is None:
            raise IncompatibleGranularityError(
                "axis is None; it must be resolved against an op or set explicitly before use."
            )
        if weight.dim() <= self.axis:
            raise IncompatibleGranularityError(
                f"Tensor shape {list(weight.shape)} has no axis {self.axis}"
            )
        if weight.shape[self.axis] % self.group_size:
            raise IncompatibleGranularityError(
                f"Tensor shape {list(weight.shape)}: size {weight.shape[self.axis]} along axis "
                f"{self.axis} is not divisible by group_size {self.group_size}"
            )
        return self.axis

    def num_blocks_to_cluster(self, weight: torch.Tensor) -> int:
        return weight.shape[self._checked_axis(weight)] // self.group_size

    def get_blocks_to_cluster(self, weight: torch.Tensor) -> list[torch.Tensor]:
        axis = self._checked_axis(weight)
        return list(torch.split(weight, self.group_size, dim=axis))


def granularity_from_data(data: Any) -> Any:
    """A granularity object or dict ({"type": ...}) -> the granularity (pydantic validator)."""
    return PalettizationGranularity.maybe_build_from_dict(data)


__all__ = [
    "IncompatibleGranularityError",
    "PalettizationGranularity",
    "PerGroupedChannelGranularity",
    "PerTensorGranularity",
]
