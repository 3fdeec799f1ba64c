"""Palettization granularities: one LUT per tensor, or one per group of channels."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt

from coreai_opt_gpu.config.base import SpecModel


class PerTensorGranularity(SpecModel):
    """One LUT for the whole tensor."""

    type: Literal["per_tensor"] = "per_tensor"
    axis: None = None


class PerGroupedChannelGranularity(SpecModel):
    """One LUT per `group_size` channels along `axis`.

    `axis=None` means the op's default axis: 0 for linear, convolutions and embeddings, 1 for
    transposed convolutions (whose weight is [in, out, ...]).
    """

    type: Literal["per_grouped_channel"] = "per_grouped_channel"
    axis: Literal[0, 1] | None = None
    group_size: PositiveInt


PalettizationGranularity = Annotated[
    PerTensorGranularity | PerGroupedChannelGranularity, Field(discriminator="type")
]
