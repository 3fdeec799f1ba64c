"""Where each weight element goes: weight layout <-> palettization blocks [G, N, D].

A weight of shape [O, C, *kernel] is viewed as [O, C, T] (T = prod(kernel), 1 for linear).
With cluster_dim D, rows v*D .. v*D+D-1 form vectors, so indices live in the weight layout as
[V, C, T] with V = O / D (upstream's "indices shaped like the weight, axis 0 divided by D").
Blocks tile that [V, C] grid: G0 blocks along axis 0 times G1 along axis 1 (per-tensor: 1 x 1;
grouped on axis 0: O/group_size x 1; grouped on axis 1: 1 x C/group_size). The LUT is
[G0 * G1, K, D], viewed as [G0, G1, K, D] by the dequant kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from coreai_opt_gpu.config.op_types import DEFAULT_CHANNEL_AXIS, normalize_op_type
from coreai_opt_gpu.palettization.spec import PalettizationSpec, PerGroupedChannelGranularity


class IncompatibleWeightError(ValueError):
    """A weight cannot be palettized with a spec (shape not divisible, axis missing)."""


@dataclass(frozen=True)
class PaletteLayout:
    """Block structure of one palettized weight (see module docstring)."""

    shape: tuple[int, ...]
    cluster_dim: int  # D
    blocks_axis0: int  # G0
    blocks_axis1: int  # G1

    @property
    def vectors(self) -> int:  # V
        return self.shape[0] // self.cluster_dim

    @property
    def channels(self) -> int:  # C
        return self.shape[1] if len(self.shape) > 1 else 1

    @property
    def taps(self) -> int:  # T
        return math.prod(self.shape[2:])

    @property
    def num_blocks(self) -> int:  # G
        return self.blocks_axis0 * self.blocks_axis1

    @property
    def block_vectors(self) -> int:  # N
        return self.vectors * self.channels * self.taps // self.num_blocks

    @property
    def index_shape(self) -> tuple[int, int, int]:  # [V, C, T]
        return self.vectors, self.channels, self.taps

    def _grid(self) -> tuple[int, int, int, int, int, int]:
        g0, g1 = self.blocks_axis0, self.blocks_axis1
        return g0, self.vectors // g0, g1, self.channels // g1, self.taps, self.cluster_dim

    def to_blocks(self, weight: torch.Tensor) -> torch.Tensor:
        """[O, C, *kernel] -> [G, N, D]."""
        g0, rows, g1, cols, taps, d = self._grid()
        x = weight.reshape(self.vectors, d, self.channels, taps).permute(0, 2, 3, 1)  # [V,C,T,D]
        x = x.reshape(g0, rows, g1, cols, taps, d).permute(0, 2, 1, 3, 4, 5)
        return x.reshape(self.num_blocks, self.block_vectors, d)

    def from_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """[G, N, D] -> [O, C, *kernel] (inverse of `to_blocks`)."""
        g0, rows, g1, cols, taps, d = self._grid()
        x = blocks.reshape(g0, g1, rows, cols, taps, d).permute(0, 2, 1, 3, 4, 5)
        x = x.reshape(self.vectors, self.channels, taps, d).permute(0, 3, 1, 2)  # [V,D,C,T]
        return x.reshape(self.shape)

    def indices_from_blocks(self, indices: torch.Tensor) -> torch.Tensor:
        """[G, N] -> [V, C, T]: block-ordered indices in the weight layout."""
        g0, rows, g1, cols, taps, _ = self._grid()
        x = indices.reshape(g0, g1, rows, cols, taps).permute(0, 2, 1, 3, 4)
        return x.reshape(self.index_shape)

    def lut_view(self, lut: torch.Tensor) -> torch.Tensor:
        """[G, K, D] -> [G0, G1, K, D]."""
        return lut.reshape(self.blocks_axis0, self.blocks_axis1, *lut.shape[1:])

    def _grid_view(self, weight: torch.Tensor) -> torch.Tensor:
        """[O, C, *kernel] -> [G0, G1, rows, cols, T, D] as a view (no copy): block (b0, b1)
        is [b0, b1]; also for expanded (stride-0) tensors such as a broadcast scale."""
        g0, rows, g1, cols, taps, d = self._grid()
        x = weight.reshape(self.vectors, d, self.channels, taps).permute(0, 2, 3, 1)
        return x.unflatten(0, (g0, rows)).unflatten(2, (g1, cols)).permute(0, 2, 1, 3, 4, 5)

    def _runs(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """Blocks start..stop-1 as runs (b0, first b1, last b1 + 1) of one row of blocks."""
        g1 = self.blocks_axis1
        return [
            (b0, max(start, b0 * g1) - b0 * g1, min(stop, (b0 + 1) * g1) - b0 * g1)
            for b0 in range(start // g1, (stop - 1) // g1 + 1)
        ]

    def read_scaled_blocks(
        self, weight: torch.Tensor, divisor: torch.Tensor, start: int, stop: int
    ) -> torch.Tensor:
        """Blocks start..stop-1 of weight / divisor (both [O, C, *kernel]; the divisor may be
        an expanded per-row scale) as [stop - start, N, D], in one allocation: the quotient of
        the two blocks' views."""
        line_w = self._block_line(self._grid_view(weight))
        line_s = self._block_line(self._grid_view(divisor))
        if line_w is None or line_s is None:
            return self.read_blocks(weight, start, stop) / self.read_blocks(divisor, start, stop)
        quotient = line_w[start:stop] / line_s[start:stop]  # [B, rows, cols, T, D], contiguous
        return quotient.reshape(stop - start, self.block_vectors, self.cluster_dim)

    def read_blocks(self, weight: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Blocks start..stop-1 of `weight` [O, C, *kernel] as [stop - start, N, D]: a view
        when they lie contiguously in memory, else a copy of those blocks only."""
        if self._blocks_are_flat() and weight.is_contiguous():
            flat = weight.view(self.num_blocks, self.block_vectors, self.cluster_dim)
            return flat[start:stop]
        return self._read_runs(weight, start, stop)

    def _blocks_are_flat(self) -> bool:
        """Block g is elements g*N*D .. (g+1)*N*D-1 of the flat weight: one block along axis 1,
        and vectors that are consecutive elements (scalars, or weights of one column)."""
        return self.blocks_axis1 == 1 and (self.cluster_dim == 1 or self.channels * self.taps == 1)

    def _read_runs(self, weight: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        grid = self._grid_view(weight)
        n, d = self.block_vectors, self.cluster_dim
        line = self._block_line(grid)
        if line is not None:  # blocks along one axis only: one slice, one copy
            return line[start:stop].reshape(stop - start, n, d)
        pieces = [grid[b0, lo:hi].reshape(hi - lo, n, d) for b0, lo, hi in self._runs(start, stop)]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _block_line(self, grid: torch.Tensor) -> torch.Tensor | None:
        """The grid [G0, G1, ...] as [G, ...] in block order, a view, when blocks run along
        one axis only (G0 or G1 is 1, as every palettization granularity gives); else None."""
        if self.blocks_axis0 == 1:
            return grid[0]
        if self.blocks_axis1 == 1:
            return grid[:, 0]
        return None

    def write_indices(self, indices: torch.Tensor, start: int, codes: torch.Tensor) -> None:
        """Store codes [B, N] of blocks start..start+B-1 into indices [V, C, T] (in place).
        With one block along axis 1 the block order is the index order: one flat copy (a
        copy per block run into the grid view was 70x slower for an 11008x4096 weight)."""
        if self.blocks_axis1 == 1 and indices.is_contiguous():
            flat = indices.view(self.num_blocks, self.block_vectors)
            flat[start : start + len(codes)].copy_(codes.reshape(len(codes), -1))
            return
        g0, rows, g1, cols, taps, _ = self._grid()
        grid = indices.unflatten(0, (g0, rows)).unflatten(2, (g1, cols)).permute(0, 2, 1, 3, 4)
        line = self._block_line(grid)
        if line is not None:  # blocks along one axis only: one copy into a view
            count = len(codes)
            line[start : start + count].copy_(codes.reshape(count, rows, cols, taps))
            return
        offset = start
        for b0, lo, hi in self._runs(start, start + len(codes)):
            count = hi - lo
            source = codes[offset - start : offset - start + count]
            grid[b0, lo:hi].copy_(source.reshape(count, rows, cols, taps))
            offset += count


def palette_layout(shape: tuple[int, ...], spec: PalettizationSpec, op_type: str) -> PaletteLayout:
    """Block structure of a weight of `shape` under `spec`; raises IncompatibleWeightError."""
    shape = tuple(int(s) for s in shape)
    d = spec.cluster_dim
    if not shape or math.prod(shape) == 0:
        raise IncompatibleWeightError(f"weight of shape {list(shape)} is empty")
    if shape[0] % d:
        raise IncompatibleWeightError(
            f"weight of shape {list(shape)}: dim 0 ({shape[0]}) is not divisible by cluster_dim={d}"
        )
    granularity = spec.granularity
    if not isinstance(granularity, PerGroupedChannelGranularity):
        return PaletteLayout(shape, d, 1, 1)
    axis = (
        granularity.axis
        if granularity.axis is not None
        else (DEFAULT_CHANNEL_AXIS[normalize_op_type(op_type)])
    )
    group = granularity.group_size
    if axis >= len(shape):
        raise IncompatibleWeightError(
            f"weight of shape {list(shape)} has no axis {axis} for per_grouped_channel"
        )
    if shape[axis] % group:
        raise IncompatibleWeightError(
            f"weight of shape {list(shape)}: axis {axis} ({shape[axis]}) is not divisible by "
            f"group_size={group}"
        )
    if axis == 0:
        if group % d:
            raise IncompatibleWeightError(
                f"weight of shape {list(shape)}: group_size={group} on axis 0 is not divisible "
                f"by cluster_dim={d}"
            )
        return PaletteLayout(shape, d, shape[0] // group, 1)
    return PaletteLayout(shape, d, 1, shape[1] // group)
