"""coreai_opt_gpu: k-means weight palettization with the coreai_opt API, fast on NVIDIA GPUs.

Importing the package never touches a GPU driver: kernels compile on first use.
"""

from coreai_opt_gpu.common import (
    CoreMLExportError,
    DependencyVersionWarning,
    TorchaoTorchIncompatibilityWarning,
    UntestedTorchVersionWarning,
)
from coreai_opt_gpu.export import ExportBackend

__version__ = "0.1.0"

__all__ = [
    "CoreMLExportError",
    "DependencyVersionWarning",
    "ExportBackend",
    "TorchaoTorchIncompatibilityWarning",
    "UntestedTorchVersionWarning",
    "__version__",
]
