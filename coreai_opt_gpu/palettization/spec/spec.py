"""`PalettizationSpec`: how one weight is palettized (bits, LUT granularity, vectors, LUT dtype,
training strategy)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, PositiveInt, PrivateAttr, model_validator

from coreai_opt_gpu.common import CompressionType
from coreai_opt_gpu.config.spec import CompressionSpec
from coreai_opt_gpu.palettization.spec.granularity import (
    PalettizationGranularity,
    PerTensorGranularity,
    granularity_from_data,
)
from coreai_opt_gpu.palettization.spec.training_strategy import (
    DefaultTrainingSpec,
    TrainingStrategySpec,
    strategy_spec_from_data,
)
from coreai_opt_gpu.quantization.spec import (
    PerTensorGranularity as QuantPerTensorGranularity,
)
from coreai_opt_gpu.quantization.spec import (
    QuantizationFormulation,
    QuantizationSpec,
)
from coreai_opt_gpu.quantization.spec.spec import dtype_name

LUT_DTYPES = ("int8", "uint8", "float8_e4m3fn", "float8_e5m2")


def _not_a_bool(field: str, allowed: str):
    """A before-validator refusing booleans: pydantic would read True as 1 (coreai_opt 0.3.0
    accepts n_bits=True as 1 bit), which is a mistake, never a bit width."""

    def check(value: object) -> object:
        if isinstance(value, bool):
            raise ValueError(f"{field} must be {allowed}, got {value!r} (a bool)")
        return value

    return BeforeValidator(check)


class PalettizationSpec(CompressionSpec):
    """A weight becomes LUT[indices]: 2^n_bits centroids of `cluster_dim` values per block.

    n_bits: 1, 2, 3, 4, 6 or 8. lut_qspec: the LUT's own quantization (int8, uint8,
    float8_e4m3fn, float8_e5m2; per tensor, i.e. one scale per palettization block; zp).
    granularity: per tensor, or per group of channels. cluster_dim: > 1 for vectors of
    consecutive dim-0 elements. enable_per_channel_scale: divide each dim-0 slice by its
    abs-max before clustering. training_strategy_spec: behaviour inside `training_mode()`.
    """

    n_bits: Annotated[Literal[1, 2, 3, 4, 6, 8], _not_a_bool("n_bits", "1, 2, 3, 4, 6 or 8")] = 4
    lut_qspec: QuantizationSpec | None = None
    granularity: Annotated[PalettizationGranularity, BeforeValidator(granularity_from_data)] = (
        Field(default_factory=PerTensorGranularity)
    )
    cluster_dim: Annotated[PositiveInt, _not_a_bool("cluster_dim", "an integer >= 1")] = 1
    enable_per_channel_scale: bool = False
    training_strategy_spec: Annotated[
        TrainingStrategySpec, BeforeValidator(strategy_spec_from_data)
    ] = Field(default_factory=DefaultTrainingSpec)

    _compression_type: CompressionType = PrivateAttr(default=CompressionType.PALETTIZATION)

    @model_validator(mode="after")
    def _check_lut_qspec(self) -> PalettizationSpec:
        q = self.lut_qspec
        if q is None:
            return self
        if dtype_name(q.dtype) not in LUT_DTYPES:
            raise ValueError(
                f"lut_qspec.dtype={dtype_name(q.dtype)} is not supported; "
                f"allowed: {', '.join(LUT_DTYPES)}"
            )
        if not isinstance(q.granularity, QuantPerTensorGranularity):
            raise ValueError(
                f"lut_qspec.granularity must be per_tensor (one set of parameters per "
                f"palettization block), got {q.granularity.type}"
            )
        if q.qformulation != QuantizationFormulation.ZP:
            raise ValueError(
                f"lut_qspec.qformulation={q.qformulation.value!r} is not supported; allowed: 'zp'"
            )
        return self

    @property
    def lut_size(self) -> int:
        """Number of centroids K = 2^n_bits."""
        return 2**self.n_bits


def default_weight_palettization_spec() -> PalettizationSpec:
    """4 bits, one LUT per tensor, scalar centroids."""
    return PalettizationSpec()
