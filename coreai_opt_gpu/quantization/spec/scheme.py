"""Quantization scheme and formulation enums (string-valued, so YAML spells them plainly)."""

from __future__ import annotations

from enum import Enum


class QuantizationScheme(str, Enum):
    """How the integer range is placed around zero."""

    SYMMETRIC = "symmetric"
    ASYMMETRIC = "asymmetric"
    SYMMETRIC_WITH_CLIPPING = "symmetric_with_clipping"  # drops the most negative code: [-127, 127]


class QuantizationFormulation(str, Enum):
    """zp: x' = (q - zp) * scale. minval: x' = q * scale + min (not supported for LUTs)."""

    ZP = "zp"
    MINVAL = "minval"
