"""PalettizationSpec and QuantizationSpec: defaults, accepted and rejected values."""

import pytest
import torch
from pydantic import ValidationError

from coreai_opt_gpu.palettization.spec import (
    DefaultTrainingSpec,
    PalettizationSpec,
    PerGroupedChannelGranularity,
    PerTensorGranularity,
    default_weight_palettization_spec,
)
from coreai_opt_gpu.quantization.spec import (
    GlobalMinMaxQParamsCalculator,
    MinMaxRangeCalculator,
    MovingAverageQParamsCalculator,
    PerBlockGranularity,
    PerChannelGranularity,
    QuantizationScheme,
    QuantizationSpec,
    StaticQParamsCalculator,
    default_activation_quantization_spec,
    default_weight_quantization_spec,
)
from coreai_opt_gpu.quantization.spec.calculators import DefaultQParamsCalculator
from coreai_opt_gpu.quantization.spec.fake_quantize import DefaultFakeQuantizeImpl


def test_default_spec_is_4bit_per_tensor_scalar():
    spec = default_weight_palettization_spec()
    assert spec == PalettizationSpec()
    assert (spec.n_bits, spec.cluster_dim, spec.lut_qspec) == (4, 1, None)
    assert spec.granularity == PerTensorGranularity()
    assert spec.enable_per_channel_scale is False
    assert spec.lut_size == 16


@pytest.mark.parametrize("n_bits", [1, 2, 3, 4, 6, 8])
def test_supported_bits(n_bits):
    assert PalettizationSpec(n_bits=n_bits).lut_size == 2**n_bits


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_bits": 5}, "1, 2, 3, 4, 6 or 8"),
        ({"n_bits": 0}, "n_bits"),
        ({"cluster_dim": 0}, "cluster_dim"),
        ({"lut_qspec": {"dtype": "int4"}}, "allowed: int8, uint8, float8_e4m3fn, float8_e5m2"),
        (
            {"lut_qspec": {"dtype": "int8", "granularity": {"type": "per_channel", "axis": 0}}},
            "per_tensor",
        ),
        ({"lut_qspec": {"dtype": "int8", "qformulation": "minval"}}, "qformulation"),
        ({"lut_qspec": {"dtype": "float8_e4m3fn", "qscheme": "asymmetric"}}, "symmetric"),
        ({"granularity": {"type": "per_grouped_channel", "axis": 2, "group_size": 4}}, "axis"),
        (
            {"granularity": {"type": "per_grouped_channel", "axis": 0, "group_size": 0}},
            "group_size",
        ),
        ({"granularity": {"type": "per_row"}}, "per_grouped_channel"),
        ({"bits": 4}, "Extra inputs are not permitted"),
        ({"training_strategy_spec": {"type": "pat"}}, "allowed types: .'default'"),
        ({"granularity": {"axis": 0}}, "Missing type key"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_rejected_values_name_the_field(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        PalettizationSpec(**kwargs)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "float8_e4m3fn", "float8_e5m2"])
def test_lut_qspec_dtypes_accepted(dtype):
    spec = PalettizationSpec(lut_qspec=QuantizationSpec(dtype=dtype))
    assert spec.lut_qspec.dtype == getattr(torch, dtype)


def test_granularity_as_dict_or_object():
    as_dict = PalettizationSpec(
        granularity={"type": "per_grouped_channel", "axis": 0, "group_size": 16}
    )
    as_object = PalettizationSpec(granularity=PerGroupedChannelGranularity(axis=0, group_size=16))
    assert as_dict == as_object
    assert PalettizationSpec(granularity={"type": "per_tensor"}) == PalettizationSpec()
    assert PerGroupedChannelGranularity(group_size=8).axis is None


def test_spec_is_immutable_and_round_trips():
    spec = PalettizationSpec(
        n_bits=6,
        cluster_dim=2,
        lut_qspec={"dtype": "uint8"},
        granularity={"type": "per_grouped_channel", "axis": 1, "group_size": 8},
    )
    with pytest.raises(ValidationError):
        spec.n_bits = 3
    assert PalettizationSpec.model_validate(spec.model_dump(mode="json")) == spec
    assert PalettizationSpec.model_validate(spec.model_dump()) == spec


def test_model_dump_preserve_objects_keeps_nested_models():
    spec = PalettizationSpec(lut_qspec={"dtype": "int8"})
    dumped = spec.model_dump_preserve_objects()
    assert set(dumped) == {
        "n_bits",
        "lut_qspec",
        "granularity",
        "cluster_dim",
        "enable_per_channel_scale",
        "training_strategy_spec",
    }
    assert isinstance(dumped["granularity"], PerTensorGranularity)
    assert isinstance(dumped["lut_qspec"], QuantizationSpec)
    assert isinstance(dumped["training_strategy_spec"], DefaultTrainingSpec)


def test_upstream_dump_loads():
    """A spec as coreai_opt 0.3.0 dumps it (extra neutral keys) loads unchanged."""
    upstream = {
        "n_bits": 4,
        "lut_qspec": None,
        "granularity": {"axis": None, "type": "per_tensor"},
        "cluster_dim": 1,
        "enable_per_channel_scale": False,
        "training_strategy_spec": {"type": "default"},
    }
    assert PalettizationSpec.model_validate(upstream) == PalettizationSpec()


def test_quantization_spec_defaults_and_ranges():
    spec = QuantizationSpec()
    assert (spec.dtype, spec.qscheme, spec.n_bits) == (torch.int8, QuantizationScheme.SYMMETRIC, 8)
    assert (spec.quant_min, spec.quant_max) == (-128, 127)
    assert spec.range_calculator_cls is MinMaxRangeCalculator
    assert spec.qparam_calculator_cls is DefaultQParamsCalculator  # "default": by target
    assert spec.fake_quantize_cls is DefaultFakeQuantizeImpl
    clipped = QuantizationSpec(qscheme="symmetric_with_clipping")
    assert (clipped.quant_min, clipped.quant_max) == (-127, 127)
    assert (
        QuantizationSpec(dtype="uint4").quant_min,
        QuantizationSpec(dtype="uint4").quant_max,
    ) == (0, 15)
    assert QuantizationSpec(dtype=torch.int4).quant_min == -8
    assert QuantizationSpec(dtype="float8_e4m3fn").quant_max == 448.0


def test_quantization_spec_defaults_for_weights_and_activations():
    weight = default_weight_quantization_spec()
    assert weight.granularity == PerChannelGranularity(axis=0)
    assert weight.qparam_calculator_cls is StaticQParamsCalculator
    activation = default_activation_quantization_spec()
    assert activation.qparam_calculator_cls is MovingAverageQParamsCalculator
    assert activation.granularity.type == "per_tensor"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "float16"}, "allowed: int8, uint8"),
        ({"dtype": "not_a_dtype"}, "not a torch dtype"),
        ({"dtype": "float8_e5m2", "qscheme": "asymmetric"}, "symmetric"),
        ({"float_range": (0.5, 1.0)}, "min must be <= 0"),
        ({"float_range": (-1.0, -0.5)}, "max must be >= 0"),
        ({"float_range": (-1.0, -2.0)}, "min < max"),
        ({"float_range": (True, 1.0)}, "ints, floats or None"),
        ({"float_range": (-1.0,)}, "length 2"),
        ({"scale_dtype": "float16"}, "scale_dtype"),
        ({"scale_dtype": "float8_e8m0"}, "scale_dtype must be None for dtype=int8"),
        ({"qparam_calculator_cls": "Histogram"}, "allowed: default, static"),
        ({"range_calculator_cls": "percentile"}, "allowed: minmax"),
        ({"fake_quantize_cls": "mine"}, "allowed: default"),
        (
            {"qparam_calculator_cls": "dynamic", "qscheme": "symmetric_with_clipping"},
            "dynamic",
        ),
        ({"granularity": {"type": "per_block", "axis": 0}}, "block_size"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_quantization_spec_rejections(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        QuantizationSpec(**kwargs)


def test_quantization_spec_round_trip_and_class_names():
    spec = QuantizationSpec(
        dtype="uint8",
        qscheme="asymmetric",
        granularity=PerBlockGranularity(axis=1, block_size=32),
        qparam_calculator_cls="MovingAverageQParamsCalculator",  # our earlier spelling
        float_range=(-2.0, None),
    )
    dumped = spec.model_dump(mode="json")
    assert dumped["dtype"] == "uint8"
    assert dumped["qparam_calculator_cls"] == "moving_average"  # coreai_opt's registry key
    assert dumped["fake_quantize_cls"] == "default"
    assert dumped["range_calculator_cls"] == "minmax"
    assert dumped["granularity"] == {"axis": 1, "block_size": 32, "type": "per_block"}
    assert QuantizationSpec.model_validate(dumped) == spec
    assert QuantizationSpec.model_validate(spec.model_dump()) == spec  # python mode too


def test_calculators():
    x = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    low, high = MinMaxRangeCalculator.compute(x)
    assert (low.item(), high.item()) == (-2.0, 4.0)
    low, high = MinMaxRangeCalculator.compute(x, keep_axis=0)
    assert low.tolist() == [-2.0, -1.0] and high.tolist() == [3.0, 4.0]
    first = (torch.tensor(0.0), torch.tensor(10.0))
    second = (torch.tensor(-10.0), torch.tensor(20.0))
    assert StaticQParamsCalculator.update(first, second) is second
    assert MovingAverageQParamsCalculator.update(None, first) is first
    low, high = MovingAverageQParamsCalculator.update(first, second)
    assert torch.allclose(low, torch.tensor(-0.1)) and torch.allclose(high, torch.tensor(10.1))
    low, high = GlobalMinMaxQParamsCalculator.update(first, second)
    assert (low.item(), high.item()) == (-10.0, 20.0)
    assert DefaultQParamsCalculator.update(first, second) is second  # static until resolved


@pytest.mark.parametrize(
    ("spelling", "dtype"),
    [
        ("float8_e4m3", torch.float8_e4m3fn),
        ("float8_e4m3fn", torch.float8_e4m3fn),
        ("torch.float8_e5m2", torch.float8_e5m2),
        ("float4_e2m1fn", torch.float4_e2m1fn_x2),
        (torch.int4, torch.int4),
    ],
)
def test_dtype_spellings(spelling, dtype):
    spec = QuantizationSpec(dtype=spelling)
    assert spec.dtype == dtype
    if dtype == torch.float4_e2m1fn_x2:  # float4 takes power-of-two (e8m0) scales
        assert spec.scale_dtype == torch.float8_e8m0fnu
        assert (spec.quant_min, spec.quant_max, spec.target_dtype) == (
            -6.0,
            6.0,
            torch.float8_e4m3fn,
        )


@pytest.mark.parametrize(
    ("key", "cls"),
    [
        ("static", StaticQParamsCalculator),
        ("moving_average", MovingAverageQParamsCalculator),
        ("global_minmax", GlobalMinMaxQParamsCalculator),
        ("default", DefaultQParamsCalculator),
    ],
)
def test_calculator_registry_keys(key, cls):
    spec = QuantizationSpec(qparam_calculator_cls=key)
    assert spec.qparam_calculator_cls is cls
    assert spec.model_dump(mode="json")["qparam_calculator_cls"] == key


def test_undeclared_keys_are_dropped_like_coreai_opt_with_a_warning():
    with pytest.warns(UserWarning, match=r"ignoring unknown keys \['qschme'\]"):
        spec = QuantizationSpec(qschme="asymmetric")
    assert spec == QuantizationSpec()
    # the derived values coreai_opt dumps next to the fields go without a word
    derived = {"n_bits": 8, "target_dtype": torch.int8, "quant_min": -128, "quant_max": 127}
    assert QuantizationSpec.model_validate({"dtype": "int8", **derived}) == QuantizationSpec()


def test_negative_per_channel_axis():
    granularity = PerChannelGranularity(axis=-1)
    assert granularity.get_block_size((4, 6, 8)) == (4, 6, 1)
    assert granularity.resolved_axis(3) == 2
    with pytest.raises(ValueError, match="out of bounds"):
        PerChannelGranularity(axis=-4).get_block_size((4, 6, 8))


def test_per_grouped_channel_axis_stays_0_or_1():
    with pytest.raises(ValidationError, match="axis"):
        PerGroupedChannelGranularity(axis=-1, group_size=4)
    granularity = PerGroupedChannelGranularity(axis=1, group_size=4)
    weight = torch.zeros(6, 8)
    assert granularity.num_blocks_to_cluster(weight) == 2
    assert [b.shape for b in granularity.get_blocks_to_cluster(weight)] == [(6, 4), (6, 4)]
