"""Quantization specs: what a tensor's fake quantization looks like."""

from coreai_opt_gpu.quantization.spec.calculators import (
    MinMaxRangeCalculator,
    MovingAverageQParamsCalculator,
    StaticQParamsCalculator,
)
from coreai_opt_gpu.quantization.spec.granularity import (
    PerBlockGranularity,
    PerChannelGranularity,
    PerTensorGranularity,
    QuantizationGranularity,
)
from coreai_opt_gpu.quantization.spec.scheme import QuantizationFormulation, QuantizationScheme
from coreai_opt_gpu.quantization.spec.spec import (
    QuantizationSpec,
    default_activation_quantization_spec,
    default_weight_quantization_spec,
)

__all__ = [
    "MinMaxRangeCalculator",
    "MovingAverageQParamsCalculator",
    "PerBlockGranularity",
    "PerChannelGranularity",
    "PerTensorGranularity",
    "QuantizationFormulation",
    "QuantizationGranularity",
    "QuantizationScheme",
    "QuantizationSpec",
    "StaticQParamsCalculator",
    "default_activation_quantization_spec",
    "default_weight_quantization_spec",
]
