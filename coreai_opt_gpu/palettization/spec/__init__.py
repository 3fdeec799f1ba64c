"""Palettization specs, granularities and training strategies (coreai_opt's
`palettization.spec` names, plus our `CentroidTrainingSpec`)."""

from coreai_opt_gpu.palettization.spec.granularity import (
    PalettizationGranularity,
    PerGroupedChannelGranularity,
    PerTensorGranularity,
)
from coreai_opt_gpu.palettization.spec.spec import (
    PalettizationSpec,
    default_weight_palettization_spec,
)
from coreai_opt_gpu.palettization.spec.training_strategy import (
    CentroidTrainingSpec,
    DefaultTrainingSpec,
    TrainingStrategy,
    TrainingStrategySpec,
)

__all__ = [
    "CentroidTrainingSpec",
    "DefaultTrainingSpec",
    "PalettizationGranularity",
    "PalettizationSpec",
    "PerGroupedChannelGranularity",
    "PerTensorGranularity",
    "TrainingStrategy",
    "TrainingStrategySpec",
    "default_weight_palettization_spec",
]
