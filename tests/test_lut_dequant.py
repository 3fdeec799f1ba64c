"""Fused LUT-gather dequant: Triton kernel (interpreter on CPU) against its numpy twin.

Tolerance tier: exact. A gather (and a gather times an fp32 scale) is bit-exact in fp32 and
fp16, and a bf16 LUT gathered into bf16 is exact everywhere. A bf16 output that must round
(a scale, or a wider LUT) is exact on a GPU and within one bf16 ulp under the interpreter, whose
fp32 -> bf16 cast truncates instead of rounding to nearest even.
"""

import numpy as np
import pytest
import torch

from coreai_opt_gpu import reference
from coreai_opt_gpu.backend import BACKEND_ENV
from coreai_opt_gpu.kernels.lut_dequant import LutDequantLaunch, lut_dequant, lut_dequant_launch
from coreai_opt_gpu.ops import lut_dequant as lut_dequant_op
from coreai_opt_gpu.ops import lut_dequant_packed as lut_dequant_packed_op
from coreai_opt_gpu.palettization.layout import palette_layout
from coreai_opt_gpu.palettization.spec import PalettizationSpec, PerGroupedChannelGranularity
from tests.conftest import HAS_CUDA

# (V, C, T), (G0, G1), K, D
SHAPES = {
    "per-tensor-4bit": ((8, 16, 1), (1, 1), 16, 1),
    "axis0-groups": ((12, 10, 1), (3, 1), 16, 1),
    "axis1-groups-conv": ((5, 6, 9), (1, 3), 4, 1),
    "vector-d2": ((6, 7, 1), (2, 1), 8, 2),
    "vector-d3-axis1": ((3, 4, 2), (1, 2), 4, 3),
    "8bit-odd": ((7, 33, 1), (7, 1), 256, 1),
    "1bit-single-row": ((1, 1, 1), (1, 1), 2, 1),
    "2d-tiles": ((4, 6, 1), (2, 3), 4, 4),
}
LAUNCHES = [None, LutDequantLaunch(1, 1, 1), LutDequantLaunch(2, 8, 2), LutDequantLaunch(16, 4, 4)]


def make_inputs(shape, blocks, k, d, lut_dtype=torch.float32, scale=True, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    (v, c, t), (g0, g1) = shape, blocks
    indices = torch.randint(0, k, (v, c, t), generator=gen, dtype=torch.uint8)
    lut = torch.randn((g0, g1, k, d), generator=gen).to(lut_dtype)
    row_scale = torch.rand(v * d, generator=gen) + 0.5 if scale else None
    return indices.to(device), lut.to(device), None if row_scale is None else row_scale.to(device)


def twin(indices, lut, row_scale, out_dtype):
    expected = reference.lut_dequant(
        indices.cpu().numpy(),
        lut.cpu().float().numpy(),
        None if row_scale is None else row_scale.cpu().float().numpy(),
    )
    return torch.from_numpy(expected).to(out_dtype)


def poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


@pytest.mark.parametrize(
    "launch", LAUNCHES, ids=lambda x: "auto" if x is None else f"{x.block_v}x{x.block_m}"
)
@pytest.mark.parametrize("scale", [False, True], ids=["no-scale", "scale"])
@pytest.mark.parametrize("case", SHAPES.values(), ids=SHAPES.keys())
def test_kernel_matches_twin_exactly(case, scale, launch, device):
    shape, blocks, k, d = case
    indices, lut, row_scale = make_inputs(shape, blocks, k, d, scale=scale, device=device)
    out = poisoned((shape[0] * d, *shape[1:]), torch.float32, device)
    result = lut_dequant(indices, lut, row_scale, torch.float32, launch=launch, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert not result.isnan().any(), "an element was never written"
    assert torch.equal(result.cpu(), twin(indices, lut, row_scale, torch.float32))


@pytest.mark.parametrize("lut_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "case", [SHAPES["axis0-groups"], SHAPES["vector-d2"]], ids=["scalar", "vector"]
)
def test_dtypes(case, lut_dtype, out_dtype, device):
    shape, blocks, k, d = case
    for scale in (False, True):
        indices, lut, row_scale = make_inputs(shape, blocks, k, d, lut_dtype, scale, device)
        result = lut_dequant(
            indices,
            lut,
            row_scale,
            out_dtype,
            out=poisoned((shape[0] * d, *shape[1:]), out_dtype, device),
        ).cpu()
        expected = twin(indices, lut, row_scale, out_dtype)
        assert result.dtype == out_dtype
        must_round = scale or lut_dtype != torch.bfloat16
        if out_dtype == torch.bfloat16 and must_round and not HAS_CUDA:
            ulp = expected.float().abs() * 2.0**-7
            assert ((result.float() - expected.float()).abs() <= ulp).all()
        else:
            assert torch.equal(result, expected)


@pytest.mark.gpu
def test_bf16_scale_exact_on_gpu():
    shape, blocks, k, d = SHAPES["axis1-groups-conv"]
    indices, lut, row_scale = make_inputs(shape, blocks, k, d, device="cuda")
    result = lut_dequant(indices, lut, row_scale, torch.bfloat16)
    assert torch.equal(result.cpu(), twin(indices, lut, row_scale, torch.bfloat16))


def test_out_of_range_codes_decode_to_nan(device):
    indices, lut, _ = make_inputs((4, 8, 1), (2, 1), 4, 2, scale=False, device=device)
    indices[1, 3, 0] = 4
    indices[3, 0, 0] = 255
    result = lut_dequant(indices, lut).cpu()
    expected = twin(indices, lut, None, torch.float32)
    assert torch.equal(result.isnan(), expected.isnan())
    assert result.isnan().sum() == 4  # two codes x two vector components
    assert torch.equal(result.nan_to_num(), expected.nan_to_num())


@pytest.mark.parametrize("shape", [(0, 5, 1), (3, 0, 1), (2, 3, 0)], ids=str)
def test_empty_shapes(shape, device):
    indices = torch.zeros(shape, dtype=torch.uint8, device=device)
    lut = torch.randn(1, 1, 4, 2, device=device)
    result = lut_dequant(indices, lut)
    assert result.shape == (shape[0] * 2, *shape[1:])
    assert reference.lut_dequant(indices.cpu().numpy(), lut.cpu().numpy()).shape == result.shape
    assert lut_dequant_op(indices, lut).shape == result.shape


def test_launch_heuristic_is_pure_and_bounded():
    for v, m in [(1, 1), (7, 33), (4096, 4096), (11008, 1), (1, 100000)]:
        launch = lut_dequant_launch(v, m)
        assert launch == lut_dequant_launch(v, m)
        assert launch.block_v * launch.block_m <= 4096
        assert launch.block_m & (launch.block_m - 1) == 0


@pytest.mark.parametrize("backend", ["numpy", "triton", "auto"])
def test_dispatch_backends_agree(backend, monkeypatch, device):
    monkeypatch.setenv(BACKEND_ENV, backend)
    indices, lut, row_scale = make_inputs((6, 10, 3), (3, 2), 16, 2, device=device)
    result = lut_dequant_op(indices, lut, row_scale, torch.float16)
    assert result.device == indices.device
    assert torch.equal(result.cpu(), twin(indices, lut, row_scale, torch.float16))


def test_dispatch_errors(monkeypatch):
    indices, lut, _ = make_inputs((4, 4, 1), (1, 1), 4, 1, scale=False)
    monkeypatch.setenv(BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match="allowed: auto, triton, numpy"):
        lut_dequant_op(indices, lut)
    monkeypatch.setenv(BACKEND_ENV, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        lut_dequant_op(indices, lut)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i, lut, s: (i.long(), lut, s), "indices must be uint8"),
        (lambda i, lut, s: (i, lut.double(), s), "lut must be"),
        (lambda i, lut, s: (i, lut[:, :, :, :, None], s), "lut must be"),
        (lambda i, lut, s: (i[:3], lut, s), "does not tile"),
        (lambda i, lut, s: (i, lut, s[:-1]), "row_scale must be"),
    ],
)
def test_bad_inputs(change, message):
    indices, lut, row_scale = change(*make_inputs((4, 4, 1), (2, 1), 4, 1))
    with pytest.raises(ValueError, match=message):
        lut_dequant_op(indices, lut, row_scale)
    with pytest.raises(ValueError, match="out_dtype"):
        lut_dequant_op(*make_inputs((4, 4, 1), (2, 1), 4, 1), out_dtype=torch.int8)


def grouped(axis, group_size, cluster_dim=1, n_bits=4):
    return PalettizationSpec(
        n_bits=n_bits,
        cluster_dim=cluster_dim,
        granularity=PerGroupedChannelGranularity(axis=axis, group_size=group_size),
    )


PIPELINE = {
    "linear-per-tensor": ((24, 10), PalettizationSpec(n_bits=3), "linear"),
    "linear-axis0": ((32, 12), grouped(0, 8), "linear"),
    "linear-axis1": ((10, 32), grouped(1, 16, n_bits=2), "linear"),
    "conv2d-axis0-vector": ((16, 3, 3, 3), grouped(0, 8, cluster_dim=2), "conv2d"),
    "conv-transpose-default-axis": ((6, 8, 5), grouped(None, 4, n_bits=6), "conv_transpose1d"),
    "embedding-vector-per-tensor": (
        (12, 5),
        PalettizationSpec(cluster_dim=4, n_bits=1),
        "embedding",
    ),
}


@pytest.mark.parametrize("backend", ["numpy", "triton"])
@pytest.mark.parametrize("case", PIPELINE.values(), ids=PIPELINE.keys())
def test_pipeline_spec_to_weight(case, backend, monkeypatch, device):
    """spec -> layout -> block LUTs and indices -> dequant reproduces LUT[indices] per block."""
    monkeypatch.setenv(BACKEND_ENV, backend)
    shape, spec, op_type = case
    layout = palette_layout(shape, spec, op_type)
    gen = torch.Generator().manual_seed(1)
    k, d = spec.lut_size, spec.cluster_dim
    lut = torch.randn((layout.num_blocks, k, d), generator=gen)  # [G, K, D]
    codes = torch.randint(0, k, (layout.num_blocks, layout.block_vectors), generator=gen)
    expected = layout.from_blocks(torch.stack([lut[g][codes[g]] for g in range(len(lut))]))
    indices = layout.indices_from_blocks(codes.to(torch.uint8))
    decoded = lut_dequant_op(indices.to(device), layout.lut_view(lut).to(device))
    assert torch.equal(decoded.reshape(shape).cpu(), expected)


class Decoder(torch.nn.Module):
    def __init__(self, indices, lut, scale):
        super().__init__()
        self.register_buffer("indices", indices)
        self.register_buffer("lut", lut)
        self.register_buffer("scale", scale)

    def forward(self, x):
        weight = lut_dequant_op(self.indices, self.lut, self.scale, torch.float32)
        return x @ weight.reshape(weight.shape[0], -1)


def test_op_survives_torch_export():
    indices, lut, row_scale = make_inputs((8, 6, 1), (2, 1), 16, 1)
    module = Decoder(indices, lut, row_scale)
    x = torch.randn(3, 8)
    exported = torch.export.export(module, (x,))
    assert "coreai_opt_gpu.lut_dequant" in str(exported.graph)
    assert torch.equal(exported.module()(x), module(x))


def test_twin_matches_plain_numpy_gather():
    """The twin itself, against an element-by-element definition."""
    indices, lut, row_scale = make_inputs((4, 6, 2), (2, 3), 4, 2)
    got = reference.lut_dequant(indices.numpy(), lut.numpy(), row_scale.numpy())
    want = np.empty((8, 6, 2), np.float32)
    for v in range(4):
        for c in range(6):
            for t in range(2):
                for j in range(2):
                    code = int(indices[v, c, t])
                    want[v * 2 + j, c, t] = lut[v // 2, c // 2, code, j] * row_scale[v * 2 + j]
    assert np.array_equal(got, want)


@pytest.mark.parametrize("n_bits", [1, 2, 3, 4, 6, 8])
@pytest.mark.parametrize(
    ("shape", "blocks", "d"),
    [((5, 7, 3), (1, 1), 1), ((4, 6, 1), (2, 3), 2), ((3, 1, 1), (3, 1), 4)],
    ids=["odd-conv", "tiles-vector", "one-column"],
)
@pytest.mark.parametrize("launch", [None, LutDequantLaunch(2, 8, 1)], ids=["auto", "2x8"])
def test_packed_kernel_matches_twin_exactly(n_bits, shape, blocks, d, launch, device):
    from coreai_opt_gpu.kernels.lut_dequant import lut_dequant_packed

    k = 2**n_bits
    indices, lut, row_scale = make_inputs(shape, blocks, k, d, device="cpu", seed=n_bits)
    v, c, t = shape
    packed = torch.from_numpy(reference.pack_indices(indices.reshape(v, -1).numpy(), n_bits))
    expected = reference.lut_dequant_packed(
        packed.numpy(), lut.numpy(), row_scale.numpy(), n_bits, c, t
    )
    assert np.array_equal(
        expected, reference.lut_dequant(indices.numpy(), lut.numpy(), row_scale.numpy())
    )
    got = lut_dequant_packed(
        packed.to(device), lut.to(device), row_scale.to(device), torch.float32, n_bits, c, t, launch
    )
    assert torch.equal(got.cpu(), torch.from_numpy(expected))
    via_op = lut_dequant_packed_op(
        packed.to(device), lut.to(device), row_scale.to(device), torch.float32, n_bits, c, t
    )
    assert torch.equal(via_op.cpu(), torch.from_numpy(expected))


def test_packed_op_rejects_bad_input():
    indices, lut, _ = make_inputs((2, 4, 1), (1, 1), 16, 1)
    packed = torch.from_numpy(reference.pack_indices(indices.reshape(2, -1).numpy(), 4))
    with pytest.raises(ValueError, match=r"packed must be uint8 \[V, 2\]"):
        lut_dequant_packed_op(packed[:, :1], lut, None, torch.float32, 4, 4, 1)
    with pytest.raises(ValueError, match="n_bits=5"):
        lut_dequant_packed_op(packed, lut, None, torch.float32, 5, 4, 1)
    with pytest.raises(ValueError, match="do not fit"):
        reference.pack_indices(np.array([[16]], np.uint8), 4)


@pytest.mark.parametrize("n_bits", [1, 2, 3, 4, 6, 8])
def test_packing_round_trip_and_bit_order(n_bits):
    rng = np.random.default_rng(n_bits)
    for m in (1, 5, 8, 33):
        codes = rng.integers(0, 2**n_bits, (3, m)).astype(np.uint8)
        packed = reference.pack_indices(codes, n_bits)
        assert packed.shape == (3, (m * n_bits + 7) // 8)
        assert np.array_equal(reference.unpack_indices(packed, n_bits, m), codes)
    stream = sum(int(c) << (i * n_bits) for i, c in enumerate(codes[0]))  # little-endian
    assert int.from_bytes(packed[0].tobytes(), "little") == stream
