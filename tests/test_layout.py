"""Weight <-> palettization blocks: which elements share a LUT, and incompatible shapes."""

import pytest
import torch

from coreai_opt_gpu.palettization.layout import IncompatibleWeightError, palette_layout
from coreai_opt_gpu.palettization.spec import PalettizationSpec, PerGroupedChannelGranularity


def grouped(axis, group_size, cluster_dim=1):
    return PalettizationSpec(
        cluster_dim=cluster_dim,
        granularity=PerGroupedChannelGranularity(axis=axis, group_size=group_size),
    )


CASES = {
    "per-tensor-linear": ((12, 10), PalettizationSpec(), "linear", (1, 1)),
    "axis0-conv": ((8, 6, 3, 3), grouped(0, 4), "conv2d", (2, 1)),
    "axis1-linear": ((6, 12), grouped(1, 3), "linear", (1, 4)),
    "default-axis-transposed-conv": ((4, 6, 3), grouped(None, 2), "conv_transpose1d", (1, 3)),
    "vector-axis0": ((8, 5), grouped(0, 4, cluster_dim=2), "linear", (2, 1)),
    "vector-axis1": ((6, 4, 2), grouped(1, 2, cluster_dim=3), "conv1d", (1, 2)),
    "vector-per-tensor": ((4, 3), PalettizationSpec(cluster_dim=4), "linear", (1, 1)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_blocks_round_trip_and_contents(case):
    shape, spec, op_type, (g0, g1) = case
    layout = palette_layout(shape, spec, op_type)
    assert (layout.blocks_axis0, layout.blocks_axis1) == (g0, g1)
    weight = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    blocks = layout.to_blocks(weight)
    d = spec.cluster_dim
    assert blocks.shape == (g0 * g1, layout.block_vectors, d)
    assert torch.equal(layout.from_blocks(blocks), weight)
    # each vector is d consecutive rows of one column; each block is one tile of the grid
    flat = weight.reshape(shape[0], shape[1] if len(shape) > 1 else 1, -1)
    rows_per_block = layout.vectors // g0
    cols_per_block = layout.channels // g1
    for g in range(g0 * g1):
        b0, b1 = divmod(g, g1)
        tile = flat[
            b0 * rows_per_block * d : (b0 + 1) * rows_per_block * d,
            b1 * cols_per_block : (b1 + 1) * cols_per_block,
        ]
        expected = tile.reshape(rows_per_block, d, cols_per_block, -1).permute(0, 2, 3, 1)
        assert torch.equal(blocks[g], expected.reshape(-1, d))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_indices_from_blocks_matches_block_order(case):
    shape, spec, op_type, _ = case
    layout = palette_layout(shape, spec, op_type)
    codes = torch.arange(layout.num_blocks * layout.block_vectors).reshape(layout.num_blocks, -1)
    in_weight_layout = layout.indices_from_blocks(codes)
    assert in_weight_layout.shape == layout.index_shape
    # same permutation as the weight itself: block element n of block g sits where
    # to_blocks took it from
    vectors = (
        torch.arange(layout.vectors * layout.channels * layout.taps)
        .reshape(layout.vectors, 1, layout.channels, layout.taps)
        .expand(-1, spec.cluster_dim, -1, -1)
    )
    blocks = layout.to_blocks(vectors.reshape(shape))[..., 0]
    assert torch.equal(
        layout.indices_from_blocks(blocks).flatten(), torch.arange(in_weight_layout.numel())
    )


@pytest.mark.parametrize(
    ("shape", "spec", "message"),
    [
        ((10, 4), PalettizationSpec(cluster_dim=3), "not divisible by cluster_dim=3"),
        ((10, 4), grouped(0, 4), r"axis 0 \(10\) is not divisible by group_size=4"),
        ((8, 6), grouped(1, 4), r"axis 1 \(6\) is not divisible by group_size=4"),
        ((8, 4), grouped(0, 2, cluster_dim=4), "group_size=2 on axis 0 is not divisible"),
        ((8,), grouped(1, 2), "has no axis 1"),
        ((0, 4), PalettizationSpec(), "empty"),
    ],
)
def test_incompatible_weights(shape, spec, message):
    with pytest.raises(IncompatibleWeightError, match=message):
        palette_layout(shape, spec, "linear")


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_block_ranges_read_and_write_like_the_whole(case):
    """read_blocks / write_indices on any block range equal slicing to_blocks /
    indices_from_blocks (exact); read_blocks is a view where blocks lie flat in memory, and
    reads expanded (stride-0) tensors such as a broadcast per-channel scale."""
    shape, spec, op_type, _ = case
    layout = palette_layout(shape, spec, op_type)
    g = layout.num_blocks
    weight = torch.randn(shape)
    blocks = layout.to_blocks(weight)
    codes = torch.randint(0, 16, (g, layout.block_vectors), dtype=torch.uint8)
    for start in range(g):
        for stop in range(start + 1, g + 1):
            part = layout.read_blocks(weight, start, stop)
            assert torch.equal(part, blocks[start:stop]), (start, stop)
            if layout._blocks_are_flat():  # a view of the weight: nothing copied
                assert part._base is weight
    for step in range(1, g + 1):
        indices = torch.full(layout.index_shape, 255, dtype=torch.uint8)  # poisoned
        for start in range(0, g, step):
            layout.write_indices(indices, start, codes[start : start + step])
        assert torch.equal(indices, layout.indices_from_blocks(codes)), step
    scale = torch.rand(shape[0]).reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
    assert torch.equal(layout.read_blocks(scale, 0, g), layout.to_blocks(scale.contiguous()))
    quotient = layout.to_blocks(weight / scale)
    for start in range(g):  # weight / scale in one allocation: the same values
        part = layout.read_scaled_blocks(weight, scale, start, g)
        assert torch.equal(part, quotient[start:]), start
