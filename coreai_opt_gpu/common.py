"""Enums, warnings and errors that coreai_opt exposes at its top level (its `common` module).

`ExportBackend` lives in `coreai_opt_gpu.export` and is re-exported here and at the top level.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from coreai_opt_gpu.export import ExportBackend

# Core ML's integer codes for compression types (MIL export metadata).
_COREML_COMPRESSION_CODES: dict[str, int] = {"quantization": 3, "palettization": 2, "pruning": 1}


class CompressionType(str, Enum):
    """The compression technique a spec describes; values are lower-case strings."""

    QUANTIZATION = "quantization"
    PALETTIZATION = "palettization"
    PRUNING = "pruning"

    def __str__(self) -> str:
        return self.value

    def to_coreml_code(self) -> int:
        """Core ML's integer code for this compression type."""
        code = _COREML_COMPRESSION_CODES.get(self.value)
        if code is None:
            raise ValueError(f"No CoreML code mapping for {self.value}")
        return code


class CoreMLExportError(ValueError):
    """A model cannot be exported to the Core ML backend (the message says why)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message} Use backend=ExportBackend.CoreAI instead.")

    @classmethod
    def from_dtype(cls, dtype: Any, context: str) -> CoreMLExportError:
        """The error for a weight, activation or LUT dtype Core ML cannot store."""
        return cls(f"CoreML export does not support dtype {dtype} on {context}.")

    @classmethod
    def from_config(cls, config: object, context: str) -> CoreMLExportError:
        """The error for a quantization setting (e.g. a granularity) Core ML cannot store."""
        return cls(f"CoreML export does not support {type(config).__name__} on {context}.")


class DependencyVersionWarning(UserWarning):
    """Base category of the dependency version checks (coreai_opt runs them at import)."""


class UntestedTorchVersionWarning(DependencyVersionWarning):
    """The installed torch is newer than the versions the package is tested against."""


class TorchaoTorchIncompatibilityWarning(DependencyVersionWarning):
    """The installed torchao and torch are a known-incompatible pair."""


__all__ = [
    "CompressionType",
    "CoreMLExportError",
    "DependencyVersionWarning",
    "ExportBackend",
    "TorchaoTorchIncompatibilityWarning",
    "UntestedTorchVersionWarning",
]
