"""coreai_opt's `quantization.spec.qparams_calculator` import path (see `calculators`)."""

from coreai_opt_gpu.quantization.spec.calculators import (
    DefaultQParamsCalculator,
    DynamicQParamsCalculator,
    GlobalMinMaxQParamsCalculator,
    MovingAverageQParamsCalculator,
    QParamsCalculatorBase,
    RunningRangeMixin,
    StatefulQParamsCalculatorBase,
    StatelessQParamsCalculatorBase,
    StaticQParamsCalculator,
)

__all__ = [
    "DefaultQParamsCalculator",
    "DynamicQParamsCalculator",
    "GlobalMinMaxQParamsCalculator",
    "MovingAverageQParamsCalculator",
    "QParamsCalculatorBase",
    "RunningRangeMixin",
    "StatefulQParamsCalculatorBase",
    "StatelessQParamsCalculatorBase",
    "StaticQParamsCalculator",
]
