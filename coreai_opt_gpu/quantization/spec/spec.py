"""`QuantizationSpec`: dtype, scheme, formulation, granularity and calculators of one tensor.

Fields, defaults and accepted spellings are coreai_opt 0.3.0's: dtypes as torch dtypes or
names ("int8", "float8_e4m3" for float8_e4m3fn, "float4_e2m1fn" for float4_e2m1fn_x2), classes
as registry keys ("default", "static", "moving_average", "global_minmax", "dynamic",
"minmax") or as the classes themselves; coreai_opt's own class objects and our earlier class
names ("StaticQParamsCalculator") are accepted too. Dumps in JSON mode write dtype names and
registry keys, which both packages read.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, ClassVar

import torch
from pydantic import BeforeValidator, Field, PlainSerializer, PrivateAttr, model_validator

from coreai_opt_gpu.common import CompressionType
from coreai_opt_gpu.config.spec import CompressionSpec
from coreai_opt_gpu.quantization.spec.calculators import (
    E8M0_TARGET_MAX_POW2,
    QParamsCalculatorBase,
    RangeCalculatorBase,
    StatelessQParamsCalculatorBase,
)
from coreai_opt_gpu.quantization.spec.fake_quantize import FakeQuantizeImplBase
from coreai_opt_gpu.quantization.spec.granularity import (
    PerChannelGranularity,
    PerTensorGranularity,
    QuantizationGranularity,
    granularity_from_data,
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
    torch.float4_e2m1fn_x2: (4, True, True),
}
DTYPE_ALIASES: dict[str, torch.dtype] = {
    "float4_e2m1fn": torch.float4_e2m1fn_x2,
    "float8_e4m3": torch.float8_e4m3fn,
    "float8_e8m0": torch.float8_e8m0fnu,
}
SCALE_DTYPES: tuple[torch.dtype, ...] = (torch.float8_e8m0fnu,)
# Keys coreai_opt dumps next to the fields (derived values); dropped on load without a word.
DERIVED_KEYS = ("n_bits", "target_dtype", "_quant_range", "quant_min", "quant_max")
# Class names (coreai_opt's classes, or ours as written by earlier versions) -> registry key.
CLASS_NAME_KEYS: dict[str, str] = {
    "_DefaultFakeQuantizeImpl": "default",
    "DefaultFakeQuantizeImpl": "default",
    "_DefaultQParamsCalculator": "default",
    "DefaultQParamsCalculator": "default",
    "StaticQParamsCalculator": "static",
    "MovingAverageQParamsCalculator": "moving_average",
    "GlobalMinMaxQParamsCalculator": "global_minmax",
    "DynamicQParamsCalculator": "dynamic",
    "MinMaxRangeCalculator": "minmax",
}


def dtype_name(dtype: torch.dtype) -> str:
    """'int8' for torch.int8: the spelling used in dicts and YAML."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(value: Any, allowed: tuple[torch.dtype, ...], field: str) -> torch.dtype:
    """A torch dtype or its name (or alias) -> the dtype; ValueError naming the field."""
    names = ", ".join(dtype_name(d) for d in allowed)
    if isinstance(value, str):
        name = value.removeprefix("torch.")
        parsed = DTYPE_ALIASES.get(name, getattr(torch, name, None))
        if not isinstance(parsed, torch.dtype):
            raise ValueError(f"{field}={value!r} is not a torch dtype; allowed: {names}")
        value = parsed
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not supported; allowed: {names}")
    return value


def _registered_class(registry: type, field: str) -> Any:
    """Field type for a class named by registry key, by class, or by a known class name."""

    def parse(value: Any) -> type:
        if isinstance(value, type) and any(value is v for v in registry.REGISTRY.values()):
            return value
        name = value if isinstance(value, str) else getattr(value, "__name__", None)
        key = CLASS_NAME_KEYS.get(name.rsplit(".", 1)[-1], name) if name else name
        if key not in registry.REGISTRY:
            raise ValueError(
                f"{field}={value!r} is not supported; allowed: {', '.join(registry.REGISTRY)}"
            )
        return registry.REGISTRY[key]

    def key_of(cls: type) -> str:
        return registry.registry_key(cls) or cls.__name__

    return Annotated[type, BeforeValidator(parse), PlainSerializer(key_of, when_used="json")]


def _parse_quant_dtype(value: Any) -> torch.dtype:
    return parse_dtype(value, tuple(DTYPE_TRAITS), "dtype")


def _parse_scale_dtype(value: Any) -> torch.dtype | None:
    return None if value is None else parse_dtype(value, SCALE_DTYPES, "scale_dtype")


QuantDType = Annotated[
    torch.dtype,
    BeforeValidator(_parse_quant_dtype),
    PlainSerializer(dtype_name, when_used="json"),
]
ScaleDType = Annotated[
    torch.dtype | None,
    BeforeValidator(_parse_scale_dtype),
    PlainSerializer(lambda d: None if d is None else dtype_name(d), when_used="json"),
]
Granularity = Annotated[QuantizationGranularity, BeforeValidator(granularity_from_data)]


def _parse_float_range(value: Any) -> list[float | None]:
    if not isinstance(value, (list, tuple)):
        raise ValueError("float_range must be a list or tuple [min, max]")
    if len(value) != 2:
        raise ValueError(f"float_range must have length 2, got {list(value)}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float, type(None))) for v in value):
        raise ValueError(f"float_range entries must be ints, floats or None, got {list(value)}")
    low, high = (None if v is None else float(v) for v in value)
    if low is not None and high is not None and low >= high:
        raise ValueError(f"float_range [min, max] expects min < max, got {[low, high]}")
    if low is not None and low > 0:
        raise ValueError(f"float_range min must be <= 0, got {low}")
    if high is not None and high < 0:
        raise ValueError(f"float_range max must be >= 0, got {high}")
    return [low, high]


class QuantizationSpec(CompressionSpec):
    """How one tensor is fake-quantized.

    zp formulation: q = clamp(round(x / scale) + zp, qmin, qmax), x' = (q - zp) * scale;
    minval: q = clamp(round((x - minval) / scale) + qmin, qmin, qmax),
    x' = (q - qmin) * scale + minval. Floating dtypes need the symmetric scheme and zp.
    """

    dtype: QuantDType = torch.int8
    qscheme: QuantizationScheme = QuantizationScheme.SYMMETRIC
    qformulation: QuantizationFormulation = QuantizationFormulation.ZP
    granularity: Granularity = Field(default_factory=PerTensorGranularity)
    fake_quantize_cls: _registered_class(FakeQuantizeImplBase, "fake_quantize_cls") = Field(  # type: ignore[valid-type]
        default="default", validate_default=True
    )
    qparam_calculator_cls: _registered_class(QParamsCalculatorBase, "qparam_calculator_cls") = (  # type: ignore[valid-type]
        Field(default="default", validate_default=True)
    )
    range_calculator_cls: _registered_class(RangeCalculatorBase, "range_calculator_cls") = Field(  # type: ignore[valid-type]
        default="minmax", validate_default=True
    )
    float_range: Annotated[list[float | None], BeforeValidator(_parse_float_range)] = Field(
        default_factory=lambda: [None, None]
    )
    scale_dtype: ScaleDType = None

    _compression_type: CompressionType = PrivateAttr(default=CompressionType.QUANTIZATION)

    SUPPORTED_DTYPES: ClassVar[set[torch.dtype]] = set(DTYPE_TRAITS)

    @model_validator(mode="before")
    @classmethod
    def _drop_undeclared_keys(cls, data: Any) -> Any:
        """coreai_opt drops every undeclared key; the derived ones it dumps go silently, any
        other is dropped with a warning naming it (so a typo does not pass unseen)."""
        if not isinstance(data, dict):
            return data
        unknown = [k for k in data if k not in cls.model_fields and k not in DERIVED_KEYS]
        if unknown:
            warnings.warn(
                f"QuantizationSpec: ignoring unknown keys {unknown} (coreai_opt 0.3.0 ignores "
                f"them too); fields are {list(cls.model_fields)}",
                stacklevel=2,
            )
        data = {k: v for k, v in data.items() if k in cls.model_fields}
        dtype = data.get("dtype")
        if isinstance(dtype, str):
            dtype = data["dtype"] = _parse_quant_dtype(dtype)
        if dtype == torch.float4_e2m1fn_x2 and data.get("scale_dtype") is None:
            data["scale_dtype"] = torch.float8_e8m0fnu
        return data

    @model_validator(mode="after")
    def _check(self) -> QuantizationSpec:
        name = dtype_name(self.dtype)
        if self.is_floating and self.qscheme != QuantizationScheme.SYMMETRIC:
            raise ValueError(
                f"dtype={name} requires qscheme='symmetric', got qscheme={self.qscheme.value!r}"
            )
        if self.is_floating and self.qformulation != QuantizationFormulation.ZP:
            raise ValueError(
                f"dtype={name} requires qformulation='zp', got {self.qformulation.value!r}"
            )
        if self.scale_dtype is not None and self.dtype not in E8M0_TARGET_MAX_POW2:
            allowed = ", ".join(dtype_name(d) for d in E8M0_TARGET_MAX_POW2)
            raise ValueError(
                f"scale_dtype must be None for dtype={name}, got "
                f"{dtype_name(self.scale_dtype)}; e8m0 scales exist for {allowed}"
            )
        if (
            issubclass(self.qparam_calculator_cls, StatelessQParamsCalculatorBase)
            and self.qscheme == QuantizationScheme.SYMMETRIC_WITH_CLIPPING
        ):
            raise ValueError(
                "qscheme='symmetric_with_clipping' is not supported with a dynamic "
                "qparam_calculator_cls; use 'symmetric' or 'asymmetric'"
            )
        return self

    def get_extra_args(self) -> dict[str, Any]:
        """Fields a subclass adds beyond QuantizationSpec's (passed on to components)."""
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name not in QuantizationSpec.model_fields
        }

    @classmethod
    def get_n_bits_from_dtype(cls, dtype: torch.dtype) -> int:
        if dtype not in DTYPE_TRAITS:
            raise RuntimeError(f"Unable to get the number of bits of dtype {dtype}")
        return DTYPE_TRAITS[dtype][0]

    @classmethod
    def get_target_dtype(cls, dtype: torch.dtype) -> torch.dtype:
        """Storage dtype: sub-byte integers -> int8/uint8, float4 -> float8_e4m3fn."""
        _, signed, floating = DTYPE_TRAITS[dtype]
        if not floating:
            return torch.int8 if signed else torch.uint8
        return torch.float8_e4m3fn if dtype == torch.float4_e2m1fn_x2 else dtype

    @classmethod
    def get_quant_range(
        cls, dtype: torch.dtype, qscheme: QuantizationScheme
    ) -> tuple[int | float, int | float]:
        """(quant_min, quant_max): int8 (-128, 127), with clipping (-127, 127), uint8 (0, 255),
        float4 (-6, 6), float8 finfo's range."""
        n_bits, signed, floating = DTYPE_TRAITS[dtype]
        if floating:
            if dtype == torch.float4_e2m1fn_x2:
                return -6.0, 6.0
            info = torch.finfo(dtype)
            return float(info.min), float(info.max)
        if not signed:
            return 0, 2**n_bits - 1
        high = 2 ** (n_bits - 1) - 1
        low = -high if qscheme == QuantizationScheme.SYMMETRIC_WITH_CLIPPING else -high - 1
        return low, high

    @property
    def n_bits(self) -> int:
        return DTYPE_TRAITS[self.dtype][0]

    @property
    def target_dtype(self) -> torch.dtype:
        return self.get_target_dtype(self.dtype)

    @property
    def is_floating(self) -> bool:
        return DTYPE_TRAITS[self.dtype][2]

    @property
    def quant_min(self) -> int | float:
        return self.get_quant_range(self.dtype, self.qscheme)[0]

    @property
    def quant_max(self) -> int | float:
        return self.get_quant_range(self.dtype, self.qscheme)[1]


def default_weight_quantization_spec() -> QuantizationSpec:
    """int8 symmetric, one scale per output channel (axis 0), static min-max."""
    return QuantizationSpec(
        granularity=PerChannelGranularity(axis=0),
        qparam_calculator_cls="static",
    )


def default_activation_quantization_spec() -> QuantizationSpec:
    """int8 symmetric per-tensor, moving-average min-max."""
    return QuantizationSpec(qparam_calculator_cls="moving_average")
