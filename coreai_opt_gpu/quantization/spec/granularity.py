"""Granularities of quantization parameters: one set per tensor, per channel or per block.

Dicts name them by a `type` key (`{"type": "per_channel", "axis": 0}`), which their dumps
carry too. Axes may be negative (Python-style), as in coreai_opt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from coreai_opt_gpu.config.registry import ConfigRegistryMixin
from coreai_opt_gpu.config.spec import CompressionTargetTensor


class BlockSizeMismatchError(ValueError):
    """A block size does not divide the tensor dimension it blocks."""


def resolve_block_sizes(tensor_shape: Sequence[int], block_sizes: Sequence[int]) -> list[int]:
    """Per-axis block extents against a shape: -1 takes the whole axis, any other entry must
    be positive and divide its dimension (`BlockSizeMismatchError` otherwise)."""
    if len(block_sizes) != len(tensor_shape):
        raise ValueError(
            f"Rank of block_size ({len(block_sizes)}) must match rank of tensor "
            f"({len(tensor_shape)})"
        )
    resolved = []
    for axis, (dim, size) in enumerate(zip(tensor_shape, block_sizes, strict=True)):
        if size == -1:
            resolved.append(int(dim))
            continue
        if size <= 0:
            raise ValueError(
                f"block_size[{axis}] must be positive or -1 for the whole axis, got {size}"
            )
        if dim % size:
            raise BlockSizeMismatchError(
                f"Tensor size {dim} along axis {axis} is not divisible by block size {size}. "
                f"Full tensor size: {list(tensor_shape)}, block_size tuple: {tuple(block_sizes)}"
            )
        resolved.append(int(size))
    return resolved


def _normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(
            f"axis {axis} is out of bounds for tensor of rank {rank}. "
            f"Allowed axis range is [{-rank}, {rank})"
        )
    return axis % rank


class QuantizationGranularity(BaseModel, ConfigRegistryMixin):
    """Base of the quantization granularities (registered by their `type` key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    axis: int | None = None

    @model_serializer
    def _serialize(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in type(self).model_fields}
        key = QuantizationGranularity.registry_key(type(self))
        if key is not None:
            data["type"] = key
        return data

    @property
    def type(self) -> str:
        """The registry key: "per_tensor", "per_channel" or "per_block"."""
        return QuantizationGranularity.registry_key(type(self)) or type(self).__name__

    def get_block_size(
        self,
        tensor_shape: Sequence[int],
        quantization_target: CompressionTargetTensor = CompressionTargetTensor.WEIGHT,
    ) -> tuple[int, ...]:
        """Extent of one quantization block along every axis of a tensor of `tensor_shape`."""
        return tuple(self._get_block_size(list(tensor_shape), quantization_target))

    def _get_block_size(
        self, sizes: list[int], quantization_target: CompressionTargetTensor
    ) -> list[int]:
        raise NotImplementedError(f"{type(self).__name__} defines no block size")

    def resolved_axis(self, tensor_ndim: int) -> int | None:
        """The non-negative axis for a tensor of rank `tensor_ndim` (None when axis-less)."""
        return None if self.axis is None else _normalize_axis(self.axis, tensor_ndim)


@QuantizationGranularity.register("per_tensor")
class PerTensorGranularity(QuantizationGranularity):
    """One scale (and zero point) for the whole tensor."""

    axis: Literal[None] = None

    def _get_block_size(
        self, sizes: list[int], quantization_target: CompressionTargetTensor
    ) -> list[int]:
        return sizes


@QuantizationGranularity.register("per_channel")
class PerChannelGranularity(QuantizationGranularity):
    """One scale per slice along `axis` (negative axes count from the end; None: the op's
    default axis, resolved when the quantizer prepares a weight)."""

    axis: int | None = None

    def _get_block_size(
        self, sizes: list[int], quantization_target: CompressionTargetTensor
    ) -> list[int]:
        if self.axis is None:
            raise ValueError(
                "PerChannelGranularity axis is None and was not resolved to a default. "
                "Please specify axis explicitly."
            )
        sizes[_normalize_axis(self.axis, len(sizes))] = 1
        return sizes


PositiveInt = Annotated[int, Field(gt=0)]


@QuantizationGranularity.register("per_block")
class PerBlockGranularity(QuantizationGranularity):
    """Blocks of `block_size` elements along `axis` (an int), or blocks of `block_size[i]`
    along every axis i (a tuple, -1 for the whole axis, `axis` None)."""

    axis: int | None = None
    block_size: PositiveInt | tuple[PositiveInt | Literal[-1], ...]

    def _get_block_size(
        self, sizes: list[int], quantization_target: CompressionTargetTensor
    ) -> list[int]:
        if isinstance(self.block_size, tuple):
            if self.axis is not None:
                raise ValueError(
                    "axis must be None when block_size is a tuple (one block size per axis)"
                )
            return resolve_block_sizes(sizes, self.block_size)
        if self.axis is None:
            raise ValueError("axis must be specified when block_size is an int")
        axis = _normalize_axis(self.axis, len(sizes))
        if sizes[axis] % self.block_size:
            raise BlockSizeMismatchError(
                f"Tensor size {sizes[axis]} along axis {axis} is not divisible by block size "
                f"{self.block_size}"
            )
        # weights keep trailing (kernel) dims whole; activations collapse every other axis
        collapse = len(sizes) if quantization_target == CompressionTargetTensor.ACTIVATION else 2
        sizes[axis] = self.block_size
        for i in range(min(collapse, len(sizes))):
            if i != axis:
                sizes[i] = 1
        return sizes


QuantizationGranularity.model_rebuild()


def granularity_from_data(data: Any) -> Any:
    """A granularity object or dict ({"type": ...}) -> the granularity (pydantic validator)."""
    return QuantizationGranularity.maybe_build_from_dict(data)


__all__ = [
    "BlockSizeMismatchError",
    "PerBlockGranularity",
    "PerChannelGranularity",
    "PerTensorGranularity",
    "QuantizationGranularity",
    "resolve_block_sizes",
]
