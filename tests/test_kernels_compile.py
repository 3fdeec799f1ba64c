"""Every Triton kernel, at every configuration its launcher can pick, compiles for sm_80 and
sm_90 with the wheel's own ptxas (no GPU needed) without spills, local memory or approximate
float32 division; packed index loads are vectorized. The same builds feed docs/kernels.md
(`scripts/kernel_report.py`).
"""

import json
import os
import subprocess
import sys

import pytest

from coreai_opt_gpu.kernels import fake_quantize, kmeans_1d, kmeans_vector, lut_dequant
from coreai_opt_gpu.kernels.compile import ARCHS, all_variants

VARIANTS = [(v.name, v.label) for v in all_variants()]


@pytest.fixture(scope="module")
def builds():
    """(kernel, label, arch) -> report row, compiled in a subprocess outside the interpreter
    (two processes at a time)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run(
        [sys.executable, "-m", "coreai_opt_gpu.kernels.compile", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {(r["kernel"], r["label"], r["arch"]): r for r in json.loads(done.stdout)}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize(("kernel", "label"), VARIANTS, ids=[f"{k}[{v}]" for k, v in VARIANTS])
def test_kernel_builds_without_spills(kernel, label, arch, builds):
    row = builds[(kernel, label, arch)]
    assert "error" not in row, row.get("error")
    assert row["spilled"] == 0 and row["local"] == 0, row
    assert not row["approximate_division"], "float32 `/` is approximate on GPUs; use div_rn"
    assert row["occupancy"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
def test_packed_index_loads_are_vectorized(arch, builds):
    """At most G_B byte loads per G_C codes (the old kernel made two per code); whole-byte
    code widths load their bytes in 32-bit or wider accesses."""
    for variant in lut_dequant.variants():
        row = builds[(variant.name, variant.label, arch)]
        n_bits = variant.constexprs["N_BITS"]
        group_bytes, group_codes = lut_dequant.PACKED_GROUPS[n_bits]
        codes_per_thread = (
            variant.constexprs["BLOCK_V"]
            * variant.constexprs["BLOCK_M"]
            // (32 * variant.num_warps)
        )
        assert row["byte_loads"] <= group_bytes * max(1, codes_per_thread // group_codes), row
        if n_bits in (2, 4, 8):
            assert row["byte_loads"] == 0, row


def launch_configs(variants):
    return {(v.name, tuple(sorted(v.constexprs.items())), v.num_warps) for v in variants}


def test_variants_cover_every_launch_the_heuristics_pick():
    """The heuristics only pick configurations the compile test builds."""
    compiled = launch_configs(all_variants())
    for v, m in [(1, 1), (7, 33), (4096, 4096), (11008, 1), (1, 100000), (64, 200)]:
        tile = lut_dequant.lut_dequant_launch(v, m)
        for n_bits in lut_dequant.PACKED_GROUPS:
            constexprs = {"HAS_SCALE": True, "N_BITS": n_bits, "BLOCK_V": tile.block_v,
                          "BLOCK_M": tile.block_m}  # fmt: skip
            key = ("_lut_dequant_kernel", tuple(sorted(constexprs.items())), tile.num_warps)
            assert key in compiled
    for k in range(1, 257):
        launch = kmeans_1d.lloyd_1d_launch(k)
        constexprs = {"HAS_W": False, "BPP": launch.blocks_per_program,
                      "K_PAD": 1 << (k - 1).bit_length()}  # fmt: skip
        assert ("_lloyd_1d_kernel", tuple(sorted(constexprs.items())), launch.num_warps) in compiled
    for n_bits in range(1, 9):
        launch = kmeans_vector.assign_update_launch(1000, 2**n_bits)
        constexprs = {"K_PAD": 2**n_bits, "HAS_WEIGHTS": True, "BLOCK_N": launch.block_n}
        key = ("_assign_update_kernel", tuple(sorted(constexprs.items())), launch.num_warps)
        assert key in compiled
    for bins in (16, 64, 256, 8192):
        tile = kmeans_1d.coarse_dp_launch(bins)
        constexprs = {"HAS_W": True, "BLOCK_E": kmeans_1d.DP_EDGES_BLOCK, "ROWS": tile.rows,
                      "COLS": tile.cols, "K_PAD": kmeans_1d.MAX_K}  # fmt: skip
        key = ("_coarse_dp_start_kernel", tuple(sorted(constexprs.items())), tile.num_warps)
        assert key in compiled
    assert fake_quantize.fake_quantize_launch(7) == fake_quantize.FAKE_QUANTIZE_LAUNCH
    assert kmeans_1d.assign_1d_launch(7) == kmeans_1d.ASSIGN_1D_LAUNCH
