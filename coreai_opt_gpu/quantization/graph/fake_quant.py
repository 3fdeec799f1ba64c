"""Our fake-quantize modules as torchao pt2e sees them.

torchao inserts, shares and toggles only its own `FakeQuantizeBase` instances, so graph mode
builds the spec's `fake_quantize_cls` (the fused-op "default", or a user's registered class)
as a subclass that also derives from torchao's base (`graph_class`), through a torchao
`QuantizationSpec` whose constructor ignores torchao's arguments (`torchao_spec`): the module
is entirely defined by our spec. Importing this module imports torchao.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torchao.quantization.pt2e import FakeQuantizeBase
from torchao.quantization.pt2e.quantizer import QuantizationSpec as TorchaoSpec

from coreai_opt_gpu.config.spec import CompressionTargetTensor
from coreai_opt_gpu.quantization.spec import (
    PerChannelGranularity,
    QuantizationComponentFactory,
    QuantizationScheme,
    QuantizationSpec,
)
from coreai_opt_gpu.quantization.spec.fake_quantize import FakeQuantizeImplBase

_GRAPH_CLASSES: dict[type, type] = {}


def graph_class(impl: type[FakeQuantizeImplBase]) -> type:
    """`impl` with torchao's FakeQuantizeBase as a second base (one class per impl, kept
    importable from this module so prepared models pickle)."""
    if impl not in _GRAPH_CLASSES:
        name = f"Graph{impl.__name__.lstrip('_')}"
        cls = type(name, (impl, FakeQuantizeBase), {"__module__": __name__})
        cls.__qualname__ = name
        setattr(sys.modules[__name__], name, cls)
        _GRAPH_CLASSES[impl] = cls
    return _GRAPH_CLASSES[impl]


def build_fake_quantize(
    spec: QuantizationSpec, target: CompressionTargetTensor
) -> FakeQuantizeImplBase:
    """The torchao-visible fake-quantize module for `spec` on a tensor of kind `target`."""
    calculator = QuantizationComponentFactory.create_qparams_calculator(spec, target)
    args = QuantizationComponentFactory._fake_quantizer_args(spec)
    return graph_class(spec.fake_quantize_cls)(qparams_calculator=calculator, **args)


def _constructor(spec: QuantizationSpec, target: CompressionTargetTensor) -> Any:
    """A torchao observer constructor: `ctr.with_args(**torchao_kwargs)()` builds our module
    (torchao's kwargs are derived from the same spec and carry nothing new)."""

    def fake_quantize() -> FakeQuantizeImplBase:
        return build_fake_quantize(spec, target)

    fake_quantize.with_args = lambda **_: fake_quantize  # type: ignore[attr-defined]
    return fake_quantize


def torchao_spec(spec: QuantizationSpec, target: CompressionTargetTensor) -> TorchaoSpec:
    """A torchao QuantizationSpec that builds our fake quantizer for `spec`. Its dtype,
    range, scheme and axis describe the spec for torchao's bookkeeping."""
    granularity = spec.granularity
    per_channel = isinstance(granularity, PerChannelGranularity)
    symmetric = spec.qscheme != QuantizationScheme.ASYMMETRIC
    if per_channel:
        qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    else:
        qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    return TorchaoSpec(
        dtype=spec.target_dtype,
        observer_or_fake_quant_ctr=_constructor(spec, target),
        quant_min=int(spec.quant_min) if not spec.is_floating else None,
        quant_max=int(spec.quant_max) if not spec.is_floating else None,
        qscheme=qscheme,
        ch_axis=granularity.axis if per_channel else None,
        is_dynamic=False,
    )
