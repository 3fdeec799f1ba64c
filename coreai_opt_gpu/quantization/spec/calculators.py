"""Range and quantization-parameter calculators named by `QuantizationSpec`.

A range calculator turns a tensor into (min, max) per granularity slice; a qparams calculator
folds a new range into the running one (static: replace; moving average: exponential average
that starts from the first observed batch, not from a prepare-time example).
"""

from __future__ import annotations

import torch

Range = tuple[torch.Tensor, torch.Tensor]


class MinMaxRangeCalculator:
    """min/max over every dim except `keep_axis` (None: over the whole tensor)."""

    @staticmethod
    def compute(x: torch.Tensor, keep_axis: int | None = None) -> Range:
        if keep_axis is None:
            return x.amin(), x.amax()
        dims = [d for d in range(x.ndim) if d != keep_axis % x.ndim]
        return x.amin(dim=dims), x.amax(dim=dims)


class StaticQParamsCalculator:
    """The running range is the latest observed one (weights: observed once)."""

    @staticmethod
    def update(running: Range | None, observed: Range) -> Range:
        return observed


class MovingAverageQParamsCalculator:
    """running <- running + c * (observed - running), seeded by the first observation."""

    averaging_constant: float = 0.01

    @classmethod
    def update(cls, running: Range | None, observed: Range) -> Range:
        if running is None:
            return observed
        c = cls.averaging_constant
        return tuple(r + c * (o - r) for r, o in zip(running, observed, strict=True))  # type: ignore[return-value]


RANGE_CALCULATORS: dict[str, type] = {"MinMaxRangeCalculator": MinMaxRangeCalculator}
QPARAMS_CALCULATORS: dict[str, type] = {
    "StaticQParamsCalculator": StaticQParamsCalculator,
    "MovingAverageQParamsCalculator": MovingAverageQParamsCalculator,
}
