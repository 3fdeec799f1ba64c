"""Base classes of compression specs and of the modules that simulate them.

coreai_opt exposes these at `coreai_opt.config.spec` (and `CompressionSpec` at
`coreai_opt.config`): `PalettizationSpec` and `QuantizationSpec` are `CompressionSpec`s; the
fake-palettize and fake-quantize modules are `CompressionSimulatorBase`s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, PrivateAttr
from torch import nn

from coreai_opt_gpu.common import CompressionType
from coreai_opt_gpu.config.registry import ClassRegistryMixin


class CompressionSpec(BaseModel):
    """Immutable spec of how one tensor is compressed; unknown fields are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    _compression_type: CompressionType = PrivateAttr()

    def get_compression_type(self) -> CompressionType:
        """Which technique this spec describes (palettization, quantization, ...)."""
        return self._compression_type

    def model_dump_preserve_objects(self) -> dict[str, Any]:
        """Fields as a dict in which nested models (granularity, LUT spec) stay objects."""
        return {name: getattr(self, name) for name in type(self).model_fields}


class CompressionTargetTensor(Enum):
    """Which kind of tensor a compression component works on."""

    WEIGHT = "weight"
    ACTIVATION = "activation"
    LUT = "lut"


class CompressionSimulatorBase(ClassRegistryMixin, nn.Module):
    """A module that simulates a compression of the tensor it is given (a parametrization
    or an activation hook); `tensor_fqn` names that tensor once known."""

    tensor_fqn: str = "<unknown>"

    @abstractmethod
    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """The compressed (fake-compressed) tensor, differentiable where the method allows."""


class CompressionComponentFactoryBase(ABC):
    """Builds compression simulators from specs."""

    @classmethod
    @abstractmethod
    def construct(
        cls, spec: CompressionSpec | None, target: CompressionTargetTensor
    ) -> CompressionSimulatorBase | None:
        """The simulator for `spec` on a tensor of kind `target` (None for no spec)."""

    @classmethod
    @abstractmethod
    def construct_partial(
        cls, spec: CompressionSpec | None, target: CompressionTargetTensor
    ) -> Any:
        """A zero-argument callable that builds the simulator later (None for no spec)."""


__all__ = [
    "CompressionComponentFactoryBase",
    "CompressionSimulatorBase",
    "CompressionSpec",
    "CompressionTargetTensor",
    "CompressionType",
]
