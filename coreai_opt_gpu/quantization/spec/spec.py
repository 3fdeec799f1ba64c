"""`QuantizationSpec`: dtype, scheme, formulation, granularity and calculators of one tensor."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import BeforeValidator, Field, PlainSerializer, model_validator

from coreai_opt_gpu.config.base import SpecModel, drop_neutral_upstream_keys
from coreai_opt_gpu.quantization.spec.calculators import (
    QPARAMS_CALCULATORS,
    RANGE_CALCULATORS,
    MinMaxRangeCalculator,
    MovingAverageQParamsCalculator,
    StaticQParamsCalculator,
)
from coreai_opt_gpu.quantization.spec.granularity import (
    PerChannelGranularity,
    PerTensorGranularity,
    QuantizationGranularity,
)
from coreai_opt_gpu.quantization.spec.scheme import QuantizationFormulation, QuantizationScheme

# dtype -> (n_bits, signed, floating)
DTYPE_TRAITS: dict[torch.dtype, tuple[int, bool, bool]] = {
    torch.int8: (8, True, False),
    torch.uint8: (8, False, False),
    torch.int4: (4, True, False),
    torch.uint4: (4, False, False),
    torch.int2: (2, True, False),
    torch.uint2: (2, False, False),
    torch.float8_e4m3fn: (8, True, True),
    torch.float8_e5m2: (8, True, True),
}
SCALE_DTYPES: tuple[torch.dtype, ...] = (torch.float8_e8m0fnu,)


def dtype_name(dtype: torch.dtype) -> str:
    """'int8' for torch.int8: the spelling used in dicts and YAML."""
    return str(dtype).removeprefix("torch.")


def _parse_dtype(value: Any, allowed: tuple[torch.dtype, ...], field: str) -> torch.dtype:
    names = ", ".join(dtype_name(d) for d in allowed)
    if isinstance(value, str):
        parsed = getattr(torch, value.removeprefix("torch."), None)
        if not isinstance(parsed, torch.dtype):
            raise ValueError(f"{field}={value!r} is not a torch dtype; allowed: {names}")
        value = parsed
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not supported; allowed: {names}")
    return value


def _class_field(registry: dict[str, type], field: str) -> Any:
    def parse(value: Any) -> type:
        name = value if isinstance(value, str) else getattr(value, "__name__", None)
        name = name.rsplit(".", 1)[-1] if name else name
        if name not in registry:
            raise ValueError(f"{field}={value!r} is not supported; allowed: {', '.join(registry)}")
        return registry[name]

    return Annotated[type, BeforeValidator(parse), PlainSerializer(lambda c: c.__name__)]


QuantDType = Annotated[
    torch.dtype,
    BeforeValidator(lambda v: _parse_dtype(v, tuple(DTYPE_TRAITS), "dtype")),
    PlainSerializer(dtype_name),
]
ScaleDType = Annotated[
    torch.dtype | None,
    BeforeValidator(lambda v: None if v is None else _parse_dtype(v, SCALE_DTYPES, "scale_dtype")),
    PlainSerializer(lambda d: None if d is None else dtype_name(d)),
]


class QuantizationSpec(SpecModel):
    """How one tensor is fake-quantized: q = clamp(round(x / scale) + zp, qmin, qmax)."""

    dtype: QuantDType = torch.int8
    qscheme: QuantizationScheme = QuantizationScheme.SYMMETRIC
    qformulation: QuantizationFormulation = QuantizationFormulation.ZP
    granularity: QuantizationGranularity = Field(default_factory=PerTensorGranularity)
    range_calculator_cls: _class_field(RANGE_CALCULATORS, "range_calculator_cls") = (  # type: ignore[valid-type]
        MinMaxRangeCalculator
    )
    qparam_calculator_cls: _class_field(QPARAMS_CALCULATORS, "qparam_calculator_cls") = (  # type: ignore[valid-type]
        StaticQParamsCalculator
    )
    float_range: tuple[float | None, float | None] = (None, None)
    scale_dtype: ScaleDType = None

    @model_validator(mode="before")
    @classmethod
    def _drop_upstream_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            # upstream dumps derived values next to the fields; they carry no information.
            data = {k: v for k, v in data.items() if k not in _DERIVED_KEYS}
        return drop_neutral_upstream_keys(data, "QuantizationSpec", ("fake_quantize_cls",))

    @model_validator(mode="after")
    def _check(self) -> QuantizationSpec:
        low, high = self.float_range
        if low is not None and low > 0:
            raise ValueError(f"float_range min must be <= 0, got {low}")
        if high is not None and high < 0:
            raise ValueError(f"float_range max must be >= 0, got {high}")
        if self.is_floating and self.qscheme != QuantizationScheme.SYMMETRIC:
            raise ValueError(
                f"dtype={dtype_name(self.dtype)} requires qscheme='symmetric', "
                f"got qscheme={self.qscheme.value!r}"
            )
        if self.is_floating and self.qformulation != QuantizationFormulation.ZP:
            raise ValueError(f"dtype={dtype_name(self.dtype)} requires qformulation='zp'")
        return self

    @property
    def n_bits(self) -> int:
        return DTYPE_TRAITS[self.dtype][0]

    @property
    def is_floating(self) -> bool:
        return DTYPE_TRAITS[self.dtype][2]

    @property
    def quant_min(self) -> float:
        return self._quant_range()[0]

    @property
    def quant_max(self) -> float:
        return self._quant_range()[1]

    def _quant_range(self) -> tuple[float, float]:
        n_bits, signed, floating = DTYPE_TRAITS[self.dtype]
        if floating:
            info = torch.finfo(self.dtype)
            return float(info.min), float(info.max)
        if not signed:
            return 0, 2**n_bits - 1
        low = -(2 ** (n_bits - 1))
        if self.qscheme == QuantizationScheme.SYMMETRIC_WITH_CLIPPING:
            low += 1
        return low, 2 ** (n_bits - 1) - 1


_DERIVED_KEYS = ("n_bits", "target_dtype", "_quant_range", "quant_min", "quant_max")


def default_weight_quantization_spec() -> QuantizationSpec:
    """int8 symmetric, one scale per output channel (axis 0), static min-max."""
    return QuantizationSpec(granularity=PerChannelGranularity(axis=0))


def default_activation_quantization_spec() -> QuantizationSpec:
    """int8 symmetric per-tensor, moving-average min-max."""
    return QuantizationSpec(qparam_calculator_cls=MovingAverageQParamsCalculator)
