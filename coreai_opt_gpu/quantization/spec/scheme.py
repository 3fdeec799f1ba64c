"""Quantization scheme and formulation enums (string-valued, so YAML spells them plainly)."""

from __future__ import annotations

from enum import Enum


class QuantizationScheme(str, Enum):
    """How the integer range is placed around zero."""

    SYMMETRIC = "symmetric"
    ASYMMETRIC = "asymmetric"
    SYMMETRIC_WITH_CLIPPING = "symmetric_with_clipping"  # drops the most negative code: [-127, 127]

    def __str__(self) -> str:
        return self.value


class QuantizationFormulation(str, Enum):
    """zp: x' = (q - zp) * scale. minval: x' = (q - quant_min) * scale + minval."""

    MINVAL = "minval"
    ZP = "zp"

    def __str__(self) -> str:
        return self.value
