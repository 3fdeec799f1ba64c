"""Range and quantization-parameter calculators named by `QuantizationSpec`.

Registered by the keys coreai_opt's YAML files use: range calculators "minmax"; qparams
calculators "default" (static for weights, moving average for activations), "static",
"moving_average", "global_minmax", "dynamic". Each is an `nn.Module` with coreai_opt's
constructor, computing (scale, zero_point, minval) per granularity block. Each also offers
two pure class-level helpers that `quantization.fake_quantize.FakeQuantize` uses:
`RangeCalculator.compute(x, keep_axis)` and `QParamsCalculator.update(running, observed)`.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from coreai_opt_gpu.config.registry import ClassRegistryMixin
from coreai_opt_gpu.config.spec import CompressionTargetTensor
from coreai_opt_gpu.quantization.spec.granularity import QuantizationGranularity
from coreai_opt_gpu.quantization.spec.scheme import QuantizationScheme

Range = tuple[torch.Tensor, torch.Tensor]
F32_MIN_NORMAL = torch.finfo(torch.float32).tiny
E8M0_BIAS = 127
# largest power of two an element dtype holds, for power-of-two (e8m0) scales
E8M0_TARGET_MAX_POW2: dict[torch.dtype, int] = {
    torch.float4_e2m1fn_x2: 2,
    torch.float8_e4m3fn: 8,
    torch.float8_e5m2: 15,
}


class RangeCalculatorBase(ClassRegistryMixin, nn.Module):
    """Computes (min, max) of a tensor per granularity block, shaped [blocks per axis]."""

    def __init__(
        self,
        granularity: QuantizationGranularity,
        quantization_target: CompressionTargetTensor = CompressionTargetTensor.WEIGHT,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.granularity = granularity
        self.quantization_target = quantization_target

    def forward(self, x: torch.Tensor) -> Range:
        block = self.granularity.get_block_size(x.shape, self.quantization_target)
        low, high = self._generate_min_max(x, block)
        blocks = [size // b for size, b in zip(x.shape, block, strict=True)]
        return low.reshape(blocks), high.reshape(blocks)

    @abstractmethod
    def _generate_min_max(self, x: torch.Tensor, block: tuple[int, ...]) -> Range:
        """Lower and upper bounds of every block of `x`."""


@RangeCalculatorBase.register("minmax")
class MinMaxRangeCalculator(RangeCalculatorBase):
    """The range of a block is its min and max."""

    def _generate_min_max(self, x: torch.Tensor, block: tuple[int, ...]) -> Range:
        split = [d for size, b in zip(x.shape, block, strict=True) for d in (size // b, b)]
        view = x.reshape(split)
        dims = tuple(range(1, 2 * x.ndim, 2))
        return view.amin(dim=dims), view.amax(dim=dims)

    @staticmethod
    def compute(x: torch.Tensor, keep_axis: int | None = None) -> Range:
        """min/max over every dim except `keep_axis` (None: over the whole tensor)."""
        if keep_axis is None:
            return x.amin(), x.amax()
        dims = [d for d in range(x.ndim) if d != keep_axis % x.ndim]
        return x.amin(dim=dims), x.amax(dim=dims)


class QParamsCalculatorBase(ClassRegistryMixin, nn.Module):
    """Turns observed ranges into (scale, zero_point, minval); subclasses decide how the
    range evolves across batches (`update`) and whether the result is kept in buffers."""

    def __init__(
        self,
        dtype: torch.dtype,
        qscheme: QuantizationScheme,
        granularity: QuantizationGranularity,
        target_dtype: torch.dtype,
        quant_min: int,
        quant_max: int,
        range_calculator: RangeCalculatorBase,
        float_range: tuple[float | None, float | None],
        scale_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.dtype = dtype
        self.qscheme = QuantizationScheme(qscheme)
        self._granularity = granularity
        self.target_dtype = target_dtype
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.range_calculator = range_calculator
        self.float_range = tuple(float_range)
        self.scale_dtype = scale_dtype
        self._initialized = False

    @property
    def granularity(self) -> QuantizationGranularity:
        return self._granularity

    @granularity.setter
    def granularity(self, granularity: QuantizationGranularity) -> None:
        if self._initialized:
            raise RuntimeError(
                "Cannot change granularity after observer has been initialized. "
                "Granularity must be set before the first forward pass."
            )
        self._granularity = granularity
        self.range_calculator.granularity = granularity

    @property
    def quantization_target(self) -> CompressionTargetTensor:
        return self.range_calculator.quantization_target

    def _min_max(self, tensor: torch.Tensor) -> Range:
        """The observed range (min <= 0 <= max), with `float_range` ends fixed when set."""
        low, high = self.range_calculator(tensor)
        fixed_low, fixed_high = self.float_range
        if fixed_low is not None:
            low = torch.full_like(low, fixed_low)
        if fixed_high is not None:
            high = torch.full_like(high, fixed_high)
        return low.clamp(max=0), high.clamp(min=0)

    def compute_qparams(
        self, tensor: torch.Tensor, min_val: torch.Tensor, max_val: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(scale, zero_point, minval) for the range [min_val, max_val] (torch's conventions:
        symmetric scale = max|x| / ((qmax - qmin) / 2), asymmetric (max - min) / (qmax - qmin),
        float8 max|x| / finfo.max, e8m0 scales a power of two)."""
        low, high = min_val.float(), max_val.float()
        magnitude = torch.maximum(-low, high)
        if self.scale_dtype == torch.float8_e8m0fnu:
            return self._e8m0_scale(magnitude), None, None
        eps = torch.finfo(torch.float32).eps
        if self.dtype.is_floating_point:
            scale = (magnitude / float(self.quant_max)).clamp_min(eps)
            return scale, None, None
        qmin, qmax = self.quant_min, self.quant_max
        if self.qscheme == QuantizationScheme.ASYMMETRIC:
            scale = ((high - low) / (qmax - qmin)).clamp_min(eps)
            zero_point = (qmin - torch.round(low / scale)).clamp(qmin, qmax).to(torch.int32)
            return scale, zero_point, torch.minimum(low, torch.zeros_like(low))
        scale = (magnitude / ((qmax - qmin) / 2)).clamp_min(eps)
        zero = 0 if qmin < 0 else (qmin + qmax + 1) // 2
        return scale, torch.full_like(scale, zero, dtype=torch.int32), -magnitude

    def _e8m0_scale(self, magnitude: torch.Tensor) -> torch.Tensor:
        """2^(floor(log2(max|x|)) - target), the OCP microscaling rule (FLOOR mode)."""
        target = E8M0_TARGET_MAX_POW2.get(self.dtype)
        if target is None:
            raise ValueError(
                f"Unsupported dtype for e8m0 scale computation: {self.dtype}. "
                f"Supported: {list(E8M0_TARGET_MAX_POW2)}"
            )
        exponent = ((magnitude.float().view(torch.int32) >> 23) & 0xFF) - E8M0_BIAS - target
        exponent = exponent.clamp(-E8M0_BIAS, E8M0_BIAS + 1)
        scale = ((exponent + E8M0_BIAS).to(torch.int32) << 23).view(torch.float32)
        return scale.clamp_min(F32_MIN_NORMAL)

    @abstractmethod
    def forward(
        self, tensor: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(scale, zero_point, minval) for `tensor`."""

    @classmethod
    def update(cls, running: Range | None, observed: Range) -> Range:
        """The range after observing `observed` (static: the latest observation)."""
        return observed


def _store(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Keep `value` in buffer `name`: copied into the existing buffer when the element count
    matches (its shape, set by the first tensor observed, stays; an observer shared across a
    reshape sees several ranks), replaced otherwise."""
    current = getattr(module, name)
    value = value.detach()
    if isinstance(current, torch.Tensor) and current.numel() == value.numel() and current.numel():
        current.copy_(value.reshape(current.shape))
    else:
        setattr(module, name, value.clone())


class StatefulQParamsCalculatorBase(QParamsCalculatorBase):
    """Keeps scale, zero_point and minval as buffers across forwards."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        floating = self.dtype.is_floating_point
        self.register_buffer("scale", torch.empty(0))
        self.register_buffer("zero_point", None if floating else torch.empty(0, dtype=torch.int32))
        self.register_buffer("minval", None if floating else torch.empty(0))
        self._export_mode = False

    def _running_range(self, min_val: torch.Tensor, max_val: torch.Tensor) -> Range:
        return min_val, max_val

    def forward(
        self, tensor: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self._export_mode or (self._initialized and None not in self.float_range):
            return self.scale, self.zero_point, self.minval
        low, high = self._running_range(*self._min_max(tensor))
        scale, zero_point, minval = self.compute_qparams(tensor, low, high)
        _store(self, "scale", scale)
        if zero_point is not None:
            _store(self, "zero_point", zero_point)
        if minval is not None:
            _store(self, "minval", minval)
        self._initialized = True
        return scale, zero_point, minval

    def get_qparams(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The stored (scale, zero_point, minval); zero_point and minval are None for floats."""
        if not self._initialized:
            raise RuntimeError(
                f"{type(self).__name__} has observed no tensor yet: run a forward first"
            )
        return self.scale, self.zero_point, self.minval

    def set_export_mode(self, enabled: bool = True) -> None:
        """Freeze the stored parameters (forwards stop observing)."""
        self._export_mode = enabled

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, qscheme={self.qscheme.value}, export_mode={self._export_mode}"


class StatelessQParamsCalculatorBase(QParamsCalculatorBase):
    """Recomputes the parameters from every tensor; keeps nothing (dynamic quantization)."""

    def __init__(self, **kwargs: Any) -> None:
        float_range = tuple(kwargs.get("float_range", (None, None)))
        if float_range != (None, None):
            raise ValueError(
                f"{type(self).__name__} requires float_range=[None, None]; got "
                f"{list(float_range)}: a fixed range contradicts per-forward recomputation"
            )
        super().__init__(**kwargs)

    def forward(
        self, tensor: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        self._initialized = True
        return self.compute_qparams(tensor, *self._min_max(tensor))

    def set_export_mode(self, enabled: bool = True) -> None:
        if enabled:
            raise NotImplementedError(
                "Stateless quantization (dynamic) has no parameters to freeze for export"
            )


@QParamsCalculatorBase.register("default")
class DefaultQParamsCalculator(QParamsCalculatorBase):
    """The spec's "default": static for weights and LUTs, moving average for activations;
    `QuantizationComponentFactory.create_qparams_calculator` picks the class. Constructing
    it directly is an error."""

    def __init__(self, **kwargs: Any) -> None:
        raise RuntimeError(
            "DefaultQParamsCalculator ('default') must be resolved by the target: "
            "use QuantizationComponentFactory.create_qparams_calculator(spec, target)"
        )

    def forward(self, tensor: torch.Tensor) -> Any:  # pragma: no cover - never constructed
        raise RuntimeError("DefaultQParamsCalculator.forward() is never called")

    @staticmethod
    def resolved_for(target: CompressionTargetTensor) -> type[QParamsCalculatorBase]:
        """The class "default" means for a tensor of kind `target`."""
        if target == CompressionTargetTensor.ACTIVATION:
            return MovingAverageQParamsCalculator
        return StaticQParamsCalculator


@QParamsCalculatorBase.register("static")
class StaticQParamsCalculator(StatefulQParamsCalculatorBase):
    """Parameters from the latest tensor's range only (weights)."""


@QParamsCalculatorBase.register("dynamic")
class DynamicQParamsCalculator(StatelessQParamsCalculatorBase):
    """Parameters from every tensor, no calibration (activations only)."""


class RunningRangeMixin:
    """Keeps `running_min` / `running_max` buffers, folded by `update_running_range`."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.register_buffer("running_min", torch.empty(0))  # type: ignore[attr-defined]
        self.register_buffer("running_max", torch.empty(0))  # type: ignore[attr-defined]
        self._reseed = False

    def reseed_on_next_observation(self) -> None:
        """The next observed range replaces the running range instead of being folded into
        it (the Quantizer calls this when calibration starts, so a range seeded by prepare's
        example input does not linger); the stored parameters stay valid until then."""
        self._reseed = True

    def _running_range(self, min_val: torch.Tensor, max_val: torch.Tensor) -> Range:
        if self._initialized and not self._reseed:  # type: ignore[attr-defined]
            min_val, max_val = self.update_running_range(min_val, max_val)
        self._reseed = False
        _store(self, "running_min", min_val)  # type: ignore[arg-type]
        _store(self, "running_max", max_val)  # type: ignore[arg-type]
        return min_val, max_val

    def compute_qparams(
        self, tensor: torch.Tensor, min_val: torch.Tensor, max_val: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Parameters for the given range (already folded into the running range)."""
        return super().compute_qparams(tensor, min_val, max_val)  # type: ignore[misc]

    @abstractmethod
    def update_running_range(self, min_val: torch.Tensor, max_val: torch.Tensor) -> Range:
        """The running range after a new observation."""

    def extra_repr(self) -> str:
        return super().extra_repr() + (  # type: ignore[misc]
            f", running_min={self.running_min}, running_max={self.running_max}"
        )


@QParamsCalculatorBase.register("moving_average")
class MovingAverageQParamsCalculator(RunningRangeMixin, StatefulQParamsCalculatorBase):
    """running <- running + c * (observed - running), c = `averaging_constant` (0.01)."""

    averaging_constant_default = 0.01

    def __init__(
        self,
        dtype: torch.dtype,
        qscheme: QuantizationScheme,
        granularity: QuantizationGranularity,
        target_dtype: torch.dtype,
        quant_min: int,
        quant_max: int,
        range_calculator: RangeCalculatorBase,
        float_range: list[float | None],
        averaging_constant: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dtype=dtype,
            qscheme=qscheme,
            granularity=granularity,
            target_dtype=target_dtype,
            quant_min=quant_min,
            quant_max=quant_max,
            range_calculator=range_calculator,
            float_range=float_range,
            **kwargs,
        )
        self.averaging_constant = averaging_constant

    def update_running_range(self, min_val: torch.Tensor, max_val: torch.Tensor) -> Range:
        c = self.averaging_constant
        return (
            c * min_val + (1 - c) * self.running_min,
            c * max_val + (1 - c) * self.running_max,
        )

    @classmethod
    def update(cls, running: Range | None, observed: Range) -> Range:
        if running is None:
            return observed
        c = cls.averaging_constant_default
        return tuple(r + c * (o - r) for r, o in zip(running, observed, strict=True))  # type: ignore[return-value]


@QParamsCalculatorBase.register("global_minmax")
class GlobalMinMaxQParamsCalculator(RunningRangeMixin, StatefulQParamsCalculatorBase):
    """The running range is the elementwise min / max of everything observed."""

    def update_running_range(self, min_val: torch.Tensor, max_val: torch.Tensor) -> Range:
        return torch.minimum(self.running_min, min_val), torch.maximum(self.running_max, max_val)

    @classmethod
    def update(cls, running: Range | None, observed: Range) -> Range:
        if running is None:
            return observed
        return torch.minimum(running[0], observed[0]), torch.maximum(running[1], observed[1])


__all__ = [
    "DefaultQParamsCalculator",
    "DynamicQParamsCalculator",
    "GlobalMinMaxQParamsCalculator",
    "MinMaxRangeCalculator",
    "MovingAverageQParamsCalculator",
    "QParamsCalculatorBase",
    "RangeCalculatorBase",
    "RunningRangeMixin",
    "StatefulQParamsCalculatorBase",
    "StatelessQParamsCalculatorBase",
    "StaticQParamsCalculator",
]
