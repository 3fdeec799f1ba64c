"""Export backends a palettized or quantized model can be finalized for."""

from __future__ import annotations

from enum import Enum


class ExportBackend(str, Enum):
    """Where `finalize` sends a model: Core AI, Core ML, or plain PyTorch modules."""

    CoreAI = "coreai"
    CoreML = "coreml"
    Torch = "torch"
