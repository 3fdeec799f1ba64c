"""k-means palettization: specs, configs and the palettizer."""

from coreai_opt_gpu.palettization.config import (
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    OpKMeansPalettizerConfig,
    PATSchedule,
)
from coreai_opt_gpu.palettization.palettizer import KMeansPalettizer
from coreai_opt_gpu.palettization.spec import PalettizationSpec

__all__ = [
    "KMeansPalettizer",
    "KMeansPalettizerConfig",
    "ModuleKMeansPalettizerConfig",
    "OpKMeansPalettizerConfig",
    "PATSchedule",
    "PalettizationSpec",
]
