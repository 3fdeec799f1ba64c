"""coreai_opt's `quantization.spec.range_calculator` import path (see `calculators`)."""

from coreai_opt_gpu.quantization.spec.calculators import MinMaxRangeCalculator, RangeCalculatorBase

__all__ = ["MinMaxRangeCalculator", "RangeCalculatorBase"]
