"""Palettization specs: how one weight is turned into a LUT and indices."""

from coreai_opt_gpu.palettization.spec.granularity import (
    PalettizationGranularity,
    PerGroupedChannelGranularity,
    PerTensorGranularity,
)
from coreai_opt_gpu.palettization.spec.spec import (
    PalettizationSpec,
    default_weight_palettization_spec,
)

__all__ = [
    "PalettizationGranularity",
    "PalettizationSpec",
    "PerGroupedChannelGranularity",
    "PerTensorGranularity",
    "default_weight_palettization_spec",
]
