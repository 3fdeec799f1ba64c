"""coreai_opt's `quantization.fake_quantize` names: the fake-quantize modules the Quantizer
inserts (defined in `quantization.spec.fake_quantize`).

`FakeQuantize` is the common base under its earlier name: every fake quantizer, whatever its
`fake_quantize_cls`, is one (`isinstance(m, FakeQuantize)`); its `spec`, `low` / `high`
(representable range per block) and `num_blocks` describe what it stores.
"""

from coreai_opt_gpu.quantization.spec.fake_quantize import (
    DefaultFakeQuantizeImpl,
    FakeQuantizeImplBase,
    fp4_forward,
)

FakeQuantize = FakeQuantizeImplBase

__all__ = ["DefaultFakeQuantizeImpl", "FakeQuantize", "FakeQuantizeImplBase", "fp4_forward"]
