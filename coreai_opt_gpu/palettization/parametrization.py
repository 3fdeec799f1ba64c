"""Fake palettization of one weight: a `torch.nn.utils.parametrize` parametrization.

The weight is decoded from the stored LUT and indices (and per-channel scale) through the
LUT-gather dequant op: the Triton kernel on CUDA, its numpy twin elsewhere, in the dense
weight's dtype (any floating dtype; the LUT and scales stay float32 through model casts, see
`precision`). Outside training mode the result depends only on those buffers and is kept in
the process-wide decoded-weight cache (`decode_cache`, 32 MiB by default). In training mode
the spec's `TrainingStrategy` decides (default: the palettized weight stays frozen, no
gradient reaches it); during calibration gradients reach the dense weight straight through.
While a `PATSchedule` keeps palettization off, the dense weight passes through unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from coreai_opt_gpu.config.spec import CompressionSimulatorBase
from coreai_opt_gpu.engine.lut_quant import quantize_lut
from coreai_opt_gpu.palettization.decode_cache import CACHE
from coreai_opt_gpu.palettization.decoding import OP_DTYPES, decode_weight
from coreai_opt_gpu.palettization.layout import PaletteLayout
from coreai_opt_gpu.palettization.palettize import PalettizedWeight
from coreai_opt_gpu.palettization.precision import KeepsPrecision

DECODE_DTYPES = OP_DTYPES  # dtypes the dequant ops store directly (others: float32, cast)
ASSIGN_CHUNK = 2**22  # distance entries (vectors x centroids x blocks) per re-assignment step


class _StraightThrough(torch.autograd.Function):
    """Forward: exactly the decoded weight. Backward: the gradient goes to the dense weight."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        return decoded.view_as(decoded)  # a new tensor: the cached one keeps no graph

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class FakePalettize(KeepsPrecision, CompressionSimulatorBase):
    """Buffers: `lut` [G, K, D] float32 (a parameter when the training strategy learns it),
    `indices` [V, C, T] uint8, `row_scale` [O] float32 (empty without per-channel scale),
    `lut_scale` / `lut_zero_point` [G] (empty without a LUT quantization spec). One instance
    may serve several modules that share the dense weight (tied weights)."""

    def __init__(self, palettized: PalettizedWeight) -> None:
        super().__init__()
        self.spec = palettized.spec
        self.layout: PaletteLayout = palettized.layout
        self.n_bits = palettized.spec.n_bits
        self.lut_qspec = palettized.spec.lut_qspec  # the LUT's storage dtype at export
        self.packed_bytes = palettized.packed_bytes()  # storage once indices are bit-packed
        self.straight_through = False  # set during calibration: gradients in eval mode too
        self.fake_palett_enabled = True  # False while a PAT schedule keeps palettization off
        self._decoded: tuple[tuple, torch.Tensor] | None = None  # held for `decode_cache`
        for name, value in self._buffers_of(palettized).items():
            self.register_buffer(name, value)
        self.training_strategy = palettized.spec.training_strategy_spec.build_strategy()
        self.training_strategy.attach(self)

    @staticmethod
    def _buffers_of(palettized: PalettizedWeight) -> dict[str, torch.Tensor]:
        empty = palettized.lut.new_empty(0)
        row_scale, quantized = palettized.row_scale, palettized.lut_quantization
        return {
            "lut": palettized.lut.float().contiguous(),
            "indices": palettized.indices.contiguous(),
            "row_scale": empty if row_scale is None else row_scale.float(),
            "lut_scale": empty if quantized is None else quantized.scale,
            "lut_zero_point": empty if quantized is None else quantized.zero_point,
        }

    def _set(self, name: str, value: torch.Tensor) -> None:
        """Replace a buffer, or a parameter's data (the optimizer keeps the same parameter)."""
        if name in self._parameters:
            with torch.no_grad():
                self._parameters[name].data = value.to(self._parameters[name].device).float()
        else:
            setattr(self, name, value.to(getattr(self, name).device))

    def update(self, palettized: PalettizedWeight) -> None:
        """Replace the stored palettization (same weight, new clustering)."""
        self.packed_bytes = palettized.packed_bytes()
        for name, value in self._buffers_of(palettized).items():
            self._set(name, value)

    # --- training ------------------------------------------------------------------------------

    def make_lut_trainable(self) -> None:
        """Turn the LUT into an `nn.Parameter` (same state_dict key), for strategies that
        learn it; model.parameters() then includes it."""
        if "lut" in self._parameters:
            return
        lut = self._buffers.pop("lut")
        self.lut = nn.Parameter(lut.detach().clone())

    def freeze_lut(self) -> None:
        """Turn a trainable LUT back into a buffer (before export)."""
        if "lut" in self._parameters:
            lut = self._parameters.pop("lut").detach().clone()
            self.register_buffer("lut", lut)

    @property
    def lut_is_trainable(self) -> bool:
        return "lut" in self._parameters

    def hard_assign(self, weight: torch.Tensor) -> torch.Tensor:
        """The palettized weight from the stored LUT and indices; no gradient reaches the
        dense `weight` or the LUT (coreai_opt's strategy contract)."""
        return self.decode(weight.dtype)

    def decode_from_lut(self, dtype: torch.dtype) -> torch.Tensor:
        """The palettized weight, differentiable with respect to the LUT: each centroid's
        gradient is the sum over the elements that use it (a quantized LUT is fake-quantized
        straight-through)."""
        layout = self.layout
        lut = self.lut
        if self.lut_qspec is not None:
            quantized = quantize_lut(lut.detach(), self.lut_qspec).lut
            lut = lut + (quantized - lut).detach()
        lut = layout.lut_view(lut)  # [G0, G1, K, D]
        v, c, _ = layout.index_shape
        device = self.indices.device
        rows = torch.arange(v, device=device) // (v // layout.blocks_axis0)
        cols = torch.arange(c, device=device) // (c // layout.blocks_axis1)
        values = lut[rows[:, None, None], cols[None, :, None], self.indices.long()]  # [V,C,T,D]
        weight = values.permute(0, 3, 1, 2).reshape(layout.shape)
        if self.row_scale.numel():
            weight = weight * self.row_scale.reshape(-1, *([1] * (len(layout.shape) - 1)))
        return weight.to(dtype)

    @torch.no_grad()
    def reassign_indices(self, weight: torch.Tensor) -> None:
        """Snap a quantized LUT back onto its grid, then give every element of the dense
        `weight` its nearest centroid (ties: the lower code)."""
        lut = self.lut.detach().float()
        if self.lut_qspec is not None:
            quantized = quantize_lut(lut, self.lut_qspec)
            lut = quantized.lut
            self._set("lut", lut)
            self._set("lut_scale", quantized.scale)
            self._set("lut_zero_point", quantized.zero_point)
        dense = weight.detach().float().to(lut.device)
        if self.row_scale.numel():
            dense = dense / self.row_scale.reshape(-1, *([1] * (dense.dim() - 1)))
        blocks = self.layout.to_blocks(dense)  # [G, N, D]
        g, n, _ = blocks.shape
        step = max(1, ASSIGN_CHUNK // max(1, g * lut.shape[1]))
        codes = torch.empty(g, n, dtype=torch.uint8, device=lut.device)
        for start in range(0, n, step):
            distances = torch.cdist(blocks[:, start : start + step], lut)  # [G, n, K]
            codes[:, start : start + step] = distances.argmin(-1).to(torch.uint8)
        self.indices.copy_(self.layout.indices_from_blocks(codes).to(self.indices.device))

    def enable_fake_palett(self, enabled: bool = True) -> None:
        """Turn fake palettization on or off (off: the dense weight passes through)."""
        self.fake_palett_enabled = enabled

    # --- decoding ------------------------------------------------------------------------------

    def _cache_key(self, dtype: torch.dtype) -> tuple:
        buffers = (self.lut, self.indices, self.row_scale)
        return (dtype, *((id(b), b._version, b.device) for b in buffers))

    def decode(self, dtype: torch.dtype) -> torch.Tensor:
        """The palettized weight in `dtype`, shaped like the original.

        It depends only on the stored LUT, indices and scales, so it is kept in the
        decoded-weight cache (`decode_cache`: one LRU byte budget for all weights) and served
        again until one of them changes (a new tensor or an in-place write, e.g.
        load_state_dict or an optimizer step on a trainable LUT); not cached while
        torch.compile / torch.export trace the model.
        """
        if torch.compiler.is_compiling():
            return self._decode(dtype)
        # a tensor decoded under inference_mode cannot serve autograd later, nor the reverse
        key = (*self._cache_key(dtype), torch.is_inference_mode_enabled())
        decoded = CACHE.lookup(self, key)
        if decoded is not None and _version(decoded) != self.__dict__.get("_decoded_version"):
            decoded = None  # written in place since (e.g. `weight.mul_(0)` under no_grad)
        if decoded is None:
            decoded = self._decode(dtype)
            CACHE.store(self, key, decoded)
            self.__dict__["_decoded_version"] = _version(decoded)
        return decoded

    def _decode(self, dtype: torch.dtype) -> torch.Tensor:
        scale = self.row_scale if self.row_scale.numel() else None
        return decode_weight(self.layout, self.indices, self.lut.detach(), scale, dtype)

    def __getstate__(self) -> dict:
        """Copies and pickles leave the decoded weight behind (the cache does not know them)."""
        state = dict(super().__getstate__())
        state["_decoded"] = None
        return state

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.fake_palett_enabled:
            return weight
        if self.straight_through:
            decoded = self.decode(weight.dtype)
            if weight.requires_grad:
                return _StraightThrough.apply(weight, decoded)
            return decoded
        if self.training:
            return self.training_strategy.train_forward(self, weight)
        return self.decode(weight.dtype)

    def extra_repr(self) -> str:
        return (
            f"n_bits={self.n_bits}, blocks={self.layout.num_blocks}, shape={self.layout.shape}, "
            f"strategy={type(self.training_strategy).__name__}"
        )


def _version(tensor: torch.Tensor) -> int | None:
    """The tensor's version counter (None for an inference-mode tensor, which has none)."""
    try:
        return tensor._version
    except RuntimeError:
        return None
