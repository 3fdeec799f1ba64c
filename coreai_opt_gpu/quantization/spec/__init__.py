"""Quantization specs, schemes, granularities, calculators and the component factory
(coreai_opt's `quantization.spec` names)."""

from coreai_opt_gpu.quantization.spec.calculators import (
    DynamicQParamsCalculator,
    GlobalMinMaxQParamsCalculator,
    MinMaxRangeCalculator,
    MovingAverageQParamsCalculator,
    QParamsCalculatorBase,
    RangeCalculatorBase,
    RunningRangeMixin,
    StatefulQParamsCalculatorBase,
    StatelessQParamsCalculatorBase,
    StaticQParamsCalculator,
)
from coreai_opt_gpu.quantization.spec.factory import QuantizationComponentFactory
from coreai_opt_gpu.quantization.spec.fake_quantize import fp4_forward
from coreai_opt_gpu.quantization.spec.granularity import (
    PerBlockGranularity,
    PerChannelGranularity,
    PerTensorGranularity,
    QuantizationGranularity,
    resolve_block_sizes,
)
from coreai_opt_gpu.quantization.spec.scheme import QuantizationFormulation, QuantizationScheme
from coreai_opt_gpu.quantization.spec.spec import (
    QuantizationSpec,
    default_activation_quantization_spec,
    default_weight_quantization_spec,
)

__all__ = [
    "DynamicQParamsCalculator",
    "GlobalMinMaxQParamsCalculator",
    "MinMaxRangeCalculator",
    "MovingAverageQParamsCalculator",
    "PerBlockGranularity",
    "PerChannelGranularity",
    "PerTensorGranularity",
    "QParamsCalculatorBase",
    "QuantizationComponentFactory",
    "QuantizationFormulation",
    "QuantizationGranularity",
    "QuantizationScheme",
    "QuantizationSpec",
    "RangeCalculatorBase",
    "RunningRangeMixin",
    "StatefulQParamsCalculatorBase",
    "StatelessQParamsCalculatorBase",
    "StaticQParamsCalculator",
    "default_activation_quantization_spec",
    "default_weight_quantization_spec",
    "fp4_forward",
    "resolve_block_sizes",
]
