"""k-means palettization: specs and configs."""

from coreai_opt_gpu.palettization.config import (
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    OpKMeansPalettizerConfig,
)
from coreai_opt_gpu.palettization.spec import PalettizationSpec

__all__ = [
    "KMeansPalettizerConfig",
    "ModuleKMeansPalettizerConfig",
    "OpKMeansPalettizerConfig",
    "PalettizationSpec",
]
