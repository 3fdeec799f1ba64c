"""Fake-quantize simulators that `QuantizationSpec.fake_quantize_cls` names ("default").

`FakeQuantizeImplBase` is the module the Quantizer inserts for every quantized tensor (a weight
parametrization in eager mode, a `call_module` node in graph mode) and the registry users
subclass to plug in their own simulator (`@FakeQuantizeImplBase.register("mine")`). It owns a
qparams calculator (observer) and torchao's toggles: `observer_enabled` / `fake_quant_enabled`
uint8 buffers with `enable_observer`, `disable_observer`, `enable_fake_quant`,
`disable_fake_quant`, so `model.apply(torchao.quantization.pt2e.disable_observer)` works.

The "default" simulator quantizes and dequantizes in one pass of the fused fake-quantize op
(`coreai_opt_gpu.ops.fake_quantize`: Triton on CUDA, its numpy twin elsewhere), for every
integer and float8 dtype, per tensor, per channel and per block (blocks are laid out as the
op's channels), in the zero-point and the minval formulation (the op runs on x - minval with
zero point quant_min). Float4 rounds with `fp4_forward`. Gradients pass straight through
where the value was not clamped, as in coreai_opt.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import torch

from coreai_opt_gpu.config.spec import CompressionSimulatorBase, CompressionTargetTensor
from coreai_opt_gpu.quantization.spec.granularity import (
    BlockSizeMismatchError,
    PerChannelGranularity,
    PerTensorGranularity,
    QuantizationGranularity,
)
from coreai_opt_gpu.quantization.spec.scheme import QuantizationFormulation

# E2M1 magnitudes and the midpoints between neighbours
_FP4_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_FP4_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_FLOAT8_NAMES = {torch.float8_e4m3fn: "float8_e4m3fn", torch.float8_e5m2: "float8_e5m2"}


@functools.cache
def _fp4_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The FP4 midpoints and grid on `device`, copied there once (not at every call)."""
    return (
        torch.tensor(_FP4_MIDPOINTS, device=device),
        torch.tensor(_FP4_GRID, device=device),
    )


def fp4_forward(tensor: torch.Tensor) -> torch.Tensor:
    """Round to the nearest FP4 E2M1 value (0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives), in fp32.

    Ties go to the even encoding, magnitudes above 6 saturate to 6, NaN passes through.
    """
    x = tensor.float()
    magnitude = x.abs()
    mids, grid = _fp4_tables(x.device)
    code = torch.bucketize(magnitude, mids)  # a tie (== midpoint i) lands on code i
    tie = (code < len(_FP4_MIDPOINTS)) & (magnitude == mids[code.clamp(max=len(mids) - 1)])
    code = torch.where(tie & (code % 2 == 1), code + 1, code)
    rounded = grid[code] * torch.sign(x)
    rounded = torch.where(rounded == 0, torch.zeros_like(rounded), rounded)
    return torch.where(torch.isnan(x), x, rounded)


def block_layout(shape: torch.Size, block: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """(split, permutation) that view a tensor of `shape` as [blocks..., elements...]:
    reshape(split) gives [n0, b0, n1, b1, ...], permute(permutation) [n0, n1, ..., b0, b1, ...]."""
    split = [d for size, b in zip(shape, block, strict=True) for d in (size // b, b)]
    rank = len(shape)
    return split, [*range(0, 2 * rank, 2), *range(1, 2 * rank, 2)]


def to_blocks(x: torch.Tensor, block: tuple[int, ...]) -> torch.Tensor:
    """x [d0, d1, ...] -> [num_blocks, block_elements], blocks in row-major block order."""
    split, permutation = block_layout(x.shape, block)
    return x.reshape(split).permute(permutation).reshape(-1, math.prod(block))


def from_blocks(blocks: torch.Tensor, shape: torch.Size, block: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `to_blocks`: [num_blocks, block_elements] -> a tensor of `shape`."""
    split, permutation = block_layout(shape, block)
    inverse = [permutation.index(i) for i in range(len(permutation))]
    permuted = [split[p] for p in permutation]
    return blocks.reshape(permuted).permute(inverse).reshape(shape)


class _ClippedStraightThrough(torch.autograd.Function):
    """Forward: the quantized tensor; backward: the gradient where x was not clamped."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, quantized: torch.Tensor, inside: torch.Tensor) -> Any:
        ctx.save_for_backward(inside)
        return quantized.view_as(quantized)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


class FakeQuantizeImplBase(CompressionSimulatorBase):
    """Quantize-dequantize of one tensor with its qparams calculator's parameters.

    forward(x): with the observer on, the calculator observes x (no gradient) and returns
    (scale, zero_point, minval) shaped [blocks per axis]; with it off, the stored ones. With
    fake quantization on, returns x quantized and dequantized (x's dtype), else x itself.
    A tensor whose shape the granularity's block size does not divide disables the module
    for good, with a warning naming the tensor (`tensor_fqn`), as coreai_opt does.
    """

    def __init__(
        self,
        dtype: torch.dtype,
        qformulation: QuantizationFormulation,
        granularity: QuantizationGranularity,
        target_dtype: torch.dtype,
        quant_min: int | float,
        quant_max: int | float,
        qparams_calculator: Any,
        n_bits: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.dtype = dtype
        self.qformulation = QuantizationFormulation(qformulation)
        self.target_dtype = target_dtype
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.qparams_calculator = qparams_calculator
        self.n_bits = n_bits if n_bits is not None else _n_bits(dtype)
        self.spec = kwargs.get("spec")  # the QuantizationSpec it was built from, when known
        self._granularity = granularity
        self.export_dtype: torch.dtype | None = None
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.uint8))
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.uint8))
        self.register_buffer("_disabled", torch.tensor(False))
        self._flags: dict[str, tuple[torch.Tensor, int, bool]] = {}  # see `_flag`

    # --- properties ----------------------------------------------------------------------------

    @property
    def qscheme(self) -> Any:
        return self.qparams_calculator.qscheme

    @property
    def granularity(self) -> QuantizationGranularity:
        return self._granularity

    @granularity.setter
    def granularity(self, granularity: QuantizationGranularity) -> None:
        """Change the granularity (before the first observation only)."""
        self.qparams_calculator.granularity = granularity
        self._granularity = granularity

    @property
    def quantization_target(self) -> CompressionTargetTensor:
        return self.qparams_calculator.quantization_target

    @property
    def is_stateless(self) -> bool:
        """Whether the calculator recomputes the parameters at every forward (dynamic)."""
        from coreai_opt_gpu.quantization.spec.calculators import StatelessQParamsCalculatorBase

        return isinstance(self.qparams_calculator, StatelessQParamsCalculatorBase)

    @property
    def num_blocks(self) -> int:
        """How many (scale, offset) pairs the observed tensor has (1 before observing)."""
        scale = getattr(self.qparams_calculator, "scale", None)
        return max(1, scale.numel()) if isinstance(scale, torch.Tensor) else 1

    @property
    def low(self) -> torch.Tensor:
        """Smallest representable value per block, from the current parameters."""
        return self._representable_range()[0]

    @property
    def high(self) -> torch.Tensor:
        """Largest representable value per block, from the current parameters."""
        return self._representable_range()[1]

    def _representable_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale, zero_point, minval = self.calculate_qparams()
        if self.dtype.is_floating_point:
            return self.quant_min * scale, self.quant_max * scale
        if self.qformulation == QuantizationFormulation.MINVAL:
            return minval, minval + (self.quant_max - self.quant_min) * scale
        return (self.quant_min - zero_point) * scale, (self.quant_max - zero_point) * scale

    # --- toggles (torchao's FakeQuantizeBase API) ----------------------------------------------

    def enable_observer(self, enabled: bool = True) -> None:
        """Turn observation on (or off with enabled=False); dynamic calculators stay on."""
        if not enabled and self.is_stateless:
            return
        self.observer_enabled[0] = 1 if enabled else 0

    def disable_observer(self) -> None:
        self.enable_observer(False)

    def enable_fake_quant(self, enabled: bool = True) -> None:
        self.fake_quant_enabled[0] = 1 if enabled else 0

    def disable_fake_quant(self) -> None:
        self.enable_fake_quant(False)

    def is_disabled(self) -> bool:
        """True once a tensor's shape did not fit the block size (the module passes through)."""
        return self._flag("_disabled")

    def _flag(self, name: str) -> bool:
        """The 0/1 buffer `name` as a bool, read from the device only when the buffer was
        replaced or written since the last read (its version counter moves on every in-place
        write: the toggles, load_state_dict, torchao's helpers), so a forward on CUDA does not
        sync three times per quantizer. A write through `.data` bypasses the counter and is
        not seen."""
        buffer = getattr(self, name)
        try:
            version = buffer._version
        except RuntimeError:  # an inference-mode tensor has no version counter
            return bool(buffer.reshape(-1)[0])
        flags = self.__dict__.setdefault("_flags", {})
        cached = flags.get(name)
        if cached is None or cached[0] is not buffer or cached[1] != version:
            cached = (buffer, version, bool(buffer.reshape(-1)[0]))
            flags[name] = cached
        return cached[2]

    def set_export_mode(self, enabled: bool = True) -> None:
        self.qparams_calculator.set_export_mode(enabled)

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The stored (scale, zero_point, minval); zero_point and minval None for floats."""
        return self.qparams_calculator.get_qparams()

    def convert(self, model: torch.fx.GraphModule, observer_node: torch.fx.Node) -> None:
        """torchao's convert hook: nothing (finalize replaces the node itself)."""

    @classmethod
    def with_args(cls, **kwargs: Any) -> Any:
        """A constructor with the given keyword arguments bound (torchao's `with_args`)."""
        from functools import partial

        return partial(cls, **kwargs)

    def get_block_size(self, tensor_shape: torch.Size) -> tuple[int, ...]:
        return self.granularity.get_block_size(tensor_shape, self.quantization_target)

    def extra_repr(self) -> str:
        observer = "on" if int(self.observer_enabled[0]) else "off"
        fake_quant = "on" if int(self.fake_quant_enabled[0]) else "off"
        return (
            f"dtype={str(self.dtype).removeprefix('torch.')}, qscheme={self.qscheme}, "
            f"qformulation={self.qformulation}, granularity={self.granularity!r}, "
            f"observer={observer}, fake_quant={fake_quant}"
        )

    # --- shapes --------------------------------------------------------------------------------

    def _expand(self, param: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Per-block parameters [blocks per axis] broadcast to the tensor's shape."""
        block = self.get_block_size(shape)
        param = param.reshape([s // b for s, b in zip(shape, block, strict=True)])
        for axis, size in enumerate(block):
            param = param.repeat_interleave(size, dim=axis)
        return param

    # --- quantize / dequantize (real codes, for finalize) --------------------------------------

    def quantize(
        self,
        tensor: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor | None,
        minval: torch.Tensor | None,
        cast_to_target_dtype: bool = True,
    ) -> torch.Tensor:
        """Codes of `tensor`: integers in [quant_min, quant_max] (zp: round(x / s) + zp; minval:
        round((x - minval) / s) + quant_min), or float8/fp4 values of x / s; in target_dtype
        when `cast_to_target_dtype`, else in tensor's dtype."""
        x = tensor.float()
        s = self._expand(scale.float(), x.shape)
        if self.dtype.is_floating_point:
            v = (x / s).clamp(self.quant_min, self.quant_max)
            if self.dtype == torch.float4_e2m1fn_x2:
                codes = fp4_forward(v)
            else:
                codes = v.to(self.dtype).float()  # round onto the float8 grid
        elif self.qformulation == QuantizationFormulation.MINVAL:
            m = self._expand(minval.float(), x.shape)
            codes = (torch.round((x - m) / s) + self.quant_min).clamp(
                self.quant_min, self.quant_max
            )
        else:
            z = self._expand(zero_point.float(), x.shape)
            codes = (torch.round(x / s) + z).clamp(self.quant_min, self.quant_max)
        return codes.to(self.target_dtype if cast_to_target_dtype else tensor.dtype)

    def dequantize(
        self,
        tensor: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor | None,
        minval: torch.Tensor | None,
        output_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Values of codes produced by `quantize`, in `output_dtype`."""
        q = tensor.float()
        s = self._expand(scale.float(), q.shape)
        if self.dtype.is_floating_point:
            out = q * s
        elif self.qformulation == QuantizationFormulation.MINVAL:
            out = (q - self.quant_min) * s + self._expand(minval.float(), q.shape)
        else:
            out = (q - self._expand(zero_point.float(), q.shape)) * s
        return out.to(output_dtype)

    # --- forward -------------------------------------------------------------------------------

    def _warn_and_disable(self, error: BlockSizeMismatchError, shape: torch.Size) -> None:
        warnings.warn(
            f"tensor '{self.tensor_fqn}' ({self.quantization_target.value}, shape "
            f"{tuple(shape)}) does not fit the block size: {error}; it is left unquantized",
            UserWarning,
            stacklevel=3,
        )
        self._disabled.fill_(True)

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._flag("_disabled"):
            return tensor
        if self.export_dtype is None and tensor.is_floating_point():
            self.export_dtype = tensor.dtype  # what dequantized values are in after export
        if self._flag("observer_enabled"):
            try:
                with torch.no_grad():
                    scale, zero_point, minval = self.qparams_calculator(tensor.detach())
            except BlockSizeMismatchError as error:
                self._warn_and_disable(error, tensor.shape)
                return tensor
        else:
            scale, zero_point, minval = self.calculate_qparams()
        if not self._flag("fake_quant_enabled"):
            return tensor
        return self._fake_quantize(tensor, scale, zero_point, minval)

    def _fake_quantize(
        self,
        tensor: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor | None,
        minval: torch.Tensor | None,
    ) -> torch.Tensor:
        """Quantize-dequantize (x's dtype); subclasses define the arithmetic."""
        raise NotImplementedError(f"{type(self).__name__} defines no fake quantization")


def _n_bits(dtype: torch.dtype) -> int:
    from coreai_opt_gpu.quantization.spec.spec import DTYPE_TRAITS

    return DTYPE_TRAITS[dtype][0]


@FakeQuantizeImplBase.register("default")
class DefaultFakeQuantizeImpl(FakeQuantizeImplBase):
    """Quantize then dequantize with the fused op; clipped straight-through gradients."""

    def _op_layout(
        self, x: torch.Tensor, scale: torch.Tensor
    ) -> tuple[torch.Tensor, int | None, tuple[int, ...] | None]:
        """(x as the op sees it, its quantization axis, the block shape when x was blocked)."""
        granularity = self.granularity
        if isinstance(granularity, PerTensorGranularity) or scale.numel() == 1:
            return x, None, None
        if isinstance(granularity, PerChannelGranularity):
            axis = granularity.resolved_axis(x.ndim)
            if scale.numel() == x.shape[axis]:
                return x, axis, None
        block = self.get_block_size(x.shape)
        return to_blocks(x, block), 0, block

    def _fake_quantize(
        self,
        tensor: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor | None,
        minval: torch.Tensor | None,
    ) -> torch.Tensor:
        from coreai_opt_gpu import ops

        x, axis, block = self._op_layout(tensor, scale)
        s = scale.detach().reshape(-1).float()
        if self.dtype == torch.float4_e2m1fn_x2:  # no fused op for fp4: rounded in torch
            s_x = _broadcast(s, x, axis)
            v = (x.detach().float() / s_x).clamp(self.quant_min, self.quant_max)
            out = (fp4_forward(v) * s_x).to(x.dtype)
        elif self.dtype.is_floating_point:
            out = ops.fake_quantize(
                x.detach(), s, torch.zeros_like(s), axis, self.quant_min, self.quant_max,
                _FLOAT8_NAMES[self.dtype],
            )  # fmt: skip
        elif self.qformulation == QuantizationFormulation.MINVAL:
            # (clamp(round((x - m) / s) + qmin) - qmin) * s + m: the op on x - m, zero point qmin
            offset = _broadcast(minval.detach().reshape(-1).float(), x, axis)
            codes_zero = torch.full_like(s, float(self.quant_min))
            shifted = x.detach().float() - offset
            out = ops.fake_quantize(shifted, s, codes_zero, axis, self.quant_min, self.quant_max)
            out = (out + offset).to(x.dtype)
        else:
            z = zero_point.detach().reshape(-1).float()
            out = ops.fake_quantize(x.detach(), s, z, axis, self.quant_min, self.quant_max)
        if block is not None:
            out = from_blocks(out, tensor.shape, block)
        if not tensor.requires_grad:
            return out
        inside = self._inside(tensor, scale, zero_point, minval)
        return _ClippedStraightThrough.apply(tensor, out, inside)

    def _inside(
        self,
        tensor: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor | None,
        minval: torch.Tensor | None,
    ) -> torch.Tensor:
        """Where the value was not clamped (gradients pass there), shaped like tensor."""
        with torch.no_grad():
            x = tensor.float()
            s = self._expand(scale.float(), x.shape)
            if self.dtype.is_floating_point:
                v = x / s
            elif self.qformulation == QuantizationFormulation.MINVAL:
                v = torch.round((x - self._expand(minval.float(), x.shape)) / s) + self.quant_min
            else:
                v = torch.round(x / s) + self._expand(zero_point.float(), x.shape)
            return ((v >= self.quant_min) & (v <= self.quant_max)).to(tensor.dtype)


def _broadcast(values: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """[C] per-channel values shaped to broadcast against x along axis ([1] per tensor)."""
    if axis is None:
        return values.reshape([1] * x.ndim) if x.ndim else values.reshape(())
    return values.reshape([-1 if d == axis else 1 for d in range(x.ndim)])


__all__ = [
    "DefaultFakeQuantizeImpl",
    "FakeQuantizeImplBase",
    "block_layout",
    "fp4_forward",
    "from_blocks",
    "to_blocks",
]
