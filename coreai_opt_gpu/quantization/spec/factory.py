"""`QuantizationComponentFactory`: range calculators, qparams calculators and fake quantizers
built from a `QuantizationSpec` for a weight, an activation or a LUT."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from coreai_opt_gpu.config.spec import CompressionComponentFactoryBase, CompressionTargetTensor
from coreai_opt_gpu.quantization.spec.calculators import (
    DefaultQParamsCalculator,
    DynamicQParamsCalculator,
    QParamsCalculatorBase,
    RangeCalculatorBase,
)
from coreai_opt_gpu.quantization.spec.fake_quantize import FakeQuantizeImplBase
from coreai_opt_gpu.quantization.spec.spec import QuantizationSpec


class QuantizationComponentFactory(CompressionComponentFactoryBase):
    """Builds the components a spec names; "default" calculators are resolved by target
    (weights and LUTs: static, activations: moving average)."""

    @classmethod
    def create_range_calculator(
        cls,
        spec: QuantizationSpec,
        quantization_target: CompressionTargetTensor = CompressionTargetTensor.WEIGHT,
    ) -> RangeCalculatorBase:
        return spec.range_calculator_cls(
            granularity=spec.granularity,
            quantization_target=quantization_target,
            **spec.get_extra_args(),
        )

    @classmethod
    def create_qparams_calculator(
        cls, spec: QuantizationSpec, quantization_target: CompressionTargetTensor
    ) -> QParamsCalculatorBase:
        calculator_cls = spec.qparam_calculator_cls
        if calculator_cls is DefaultQParamsCalculator:
            calculator_cls = DefaultQParamsCalculator.resolved_for(quantization_target)
        if (
            calculator_cls is DynamicQParamsCalculator
            and quantization_target != CompressionTargetTensor.ACTIVATION
        ):
            raise ValueError(
                f"DynamicQParamsCalculator is only supported for activation quantization, "
                f"got quantization_target={quantization_target}."
            )
        return calculator_cls(
            dtype=spec.dtype,
            qscheme=spec.qscheme,
            granularity=spec.granularity,
            target_dtype=spec.target_dtype,
            quant_min=spec.quant_min,
            quant_max=spec.quant_max,
            range_calculator=cls.create_range_calculator(spec, quantization_target),
            float_range=spec.float_range,
            scale_dtype=spec.scale_dtype,
            **spec.get_extra_args(),
        )

    @classmethod
    def _fake_quantizer_args(cls, spec: QuantizationSpec) -> dict[str, Any]:
        return {
            "dtype": spec.dtype,
            "qformulation": spec.qformulation,
            "granularity": spec.granularity,
            "target_dtype": spec.target_dtype,
            "quant_min": spec.quant_min,
            "quant_max": spec.quant_max,
            "n_bits": spec.n_bits,
            "spec": spec,
            **spec.get_extra_args(),
        }

    @classmethod
    def create_fake_quantizer(
        cls, spec: QuantizationSpec, quantization_target: CompressionTargetTensor
    ) -> FakeQuantizeImplBase:
        calculator = cls.create_qparams_calculator(spec, quantization_target)
        return spec.fake_quantize_cls(
            qparams_calculator=calculator, **cls._fake_quantizer_args(spec)
        )

    @classmethod
    def create_fake_quantizer_partial(
        cls, spec: QuantizationSpec, quantization_target: CompressionTargetTensor
    ) -> Callable[..., FakeQuantizeImplBase]:
        """A callable building a new fake quantizer (with its own calculator) per call."""

        def build(**overrides: Any) -> FakeQuantizeImplBase:
            calculator = cls.create_qparams_calculator(spec, quantization_target)
            args = {**cls._fake_quantizer_args(spec), **overrides}
            return spec.fake_quantize_cls(qparams_calculator=calculator, **args)

        return build

    @classmethod
    def reconstruct_partial_qparams_calculator(
        cls, partial_ctr: Callable[..., FakeQuantizeImplBase], **kwargs: Any
    ) -> Callable[..., FakeQuantizeImplBase]:
        """A partial whose fake quantizers get calculator attributes overridden (e.g.
        `float_range`); an unknown attribute is an AttributeError naming it."""

        @functools.wraps(partial_ctr)
        def build(**overrides: Any) -> FakeQuantizeImplBase:
            fake = partial_ctr(**overrides)
            for attr, value in kwargs.items():
                if not hasattr(fake.qparams_calculator, attr):
                    raise AttributeError(
                        f"Cannot override unknown attribute '{attr}' on "
                        f"{type(fake.qparams_calculator).__name__}"
                    )
                setattr(fake.qparams_calculator, attr, value)
            return fake

        return build

    @classmethod
    def construct(
        cls, spec: QuantizationSpec | None, target: CompressionTargetTensor
    ) -> FakeQuantizeImplBase | None:
        return None if spec is None else cls.create_fake_quantizer(spec, target)

    @classmethod
    def construct_partial(
        cls, spec: QuantizationSpec | None, target: CompressionTargetTensor
    ) -> Callable[..., FakeQuantizeImplBase] | None:
        return None if spec is None else cls.create_fake_quantizer_partial(spec, target)


__all__ = ["QuantizationComponentFactory"]
