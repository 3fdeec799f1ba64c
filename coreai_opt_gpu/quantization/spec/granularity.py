"""Granularities of quantization parameters: one set per tensor, per channel or per block."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, NonNegativeInt, PositiveInt

from coreai_opt_gpu.config.base import SpecModel


class PerTensorGranularity(SpecModel):
    """One scale (and zero point) for the whole tensor."""

    type: Literal["per_tensor"] = "per_tensor"
    axis: None = None


class PerChannelGranularity(SpecModel):
    """One scale per slice along `axis` (None: the op's default axis, 0 for weights)."""

    type: Literal["per_channel"] = "per_channel"
    axis: NonNegativeInt | None = None


class PerBlockGranularity(SpecModel):
    """One scale per `block_size` consecutive elements along `axis`."""

    type: Literal["per_block"] = "per_block"
    axis: NonNegativeInt | None = None
    block_size: PositiveInt


QuantizationGranularity = Annotated[
    PerTensorGranularity | PerChannelGranularity | PerBlockGranularity,
    Field(discriminator="type"),
]
