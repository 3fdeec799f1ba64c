"""Palettization across torch.distributed ranks (gloo on CPU): sharing, seeding, gathering,
failures named by rank; the CLI under torchrun against the single-process run."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from coreai_opt_gpu import distributed
from coreai_opt_gpu.checkpoint.safetensors_io import TEMP_MARK
from coreai_opt_gpu.distributed import (
    RankError,
    RankGroup,
    all_reduce_sensitivities,
    move_palettized,
    palettize_local,
    palettize_targets_distributed,
    share_by_size,
    weight_seed,
)
from coreai_opt_gpu.palettization import (
    KMeansPalettizer,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
)
from coreai_opt_gpu.palettization.targets import find_targets
from tests.test_cli import cli, shard_bytes, tiny_model, vector_config  # noqa: F401 - fixture

SPAWN_TIMEOUT_S = 180


def test_share_by_size_is_balanced_and_deterministic():
    sizes = [100, 7, 64, 64, 300, 1, 50, 50, 50, 9]
    owners = share_by_size(sizes, 3)
    assert owners == share_by_size(sizes, 3)
    loads = [sum(s for s, o in zip(sizes, owners, strict=True) if o == r) for r in range(3)]
    assert sorted(loads) == [195, 200, 300]  # greedy largest-first: the 300 alone
    assert max(loads) - min(loads) <= max(sizes)
    assert share_by_size(sizes, 1) == [0] * len(sizes)
    assert share_by_size([5, 5], 4) == [0, 1]  # more ranks than weights: some get none
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        share_by_size(sizes, 0)


def test_weight_seed_depends_on_seed_and_name():
    assert weight_seed(0, "a.weight") == weight_seed(0, "a.weight")
    assert len({weight_seed(0, "a.weight"), weight_seed(1, "a.weight"), weight_seed(0, "b")}) == 3
    assert 0 <= weight_seed(123, "x") < 2**62


def model_and_config(seed: int = 0) -> tuple[nn.Module, KMeansPalettizerConfig]:
    """Linear layers of different sizes; 'v*' layers 2-d vector 3-bit, the others scalar."""
    torch.manual_seed(seed)
    model = nn.ModuleDict(
        {
            "a": nn.Linear(64, 96, bias=False),
            "b": nn.Linear(32, 32, bias=False),
            "c": nn.Linear(48, 128, bias=False),
            "va": nn.Linear(32, 64, bias=False),
            "vb": nn.Linear(16, 32, bias=False),
        }
    )
    vector = ModuleKMeansPalettizerConfig(
        op_state_spec={"weight": PalettizationSpec(n_bits=3, cluster_dim=2)},
        enable_fast_kmeans_mode=False,
    )
    config = KMeansPalettizerConfig.presets.w4(group_size=16).set_module_name(r"v.*", vector)
    return model, config


def same_results(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(
        torch.equal(a[n].lut, b[n].lut) and torch.equal(a[n].indices, b[n].indices) for n in a
    )


def test_palettize_local_vector_result_ignores_its_company_and_keeps_the_rng():
    model, config = model_and_config()
    targets = find_targets(model, config)
    vb = [t for t in targets if t.qualified_name == "vb.weight"]
    state = torch.get_rng_state()
    together = palettize_local(targets, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    alone = palettize_local(vb, seed=3)
    assert same_results({"vb.weight": together["vb.weight"]}, alone)
    assert list(together) == [t.qualified_name for t in targets]
    other = palettize_local(vb, seed=4)
    assert not torch.equal(other["vb.weight"].indices, alone["vb.weight"].indices)


def test_single_process_group_is_palettize_local():
    model, config = model_and_config()
    targets = find_targets(model, config)
    group = RankGroup()
    assert (group.rank, group.world_size, group.active) == (0, 1, False)
    assert group.exchange("x", lambda: 5) == [5]
    with pytest.raises(ZeroDivisionError):  # one process: the error itself
        group.exchange("x", lambda: 1 / 0)
    assert same_results(
        palettize_targets_distributed(targets, seed=2), palettize_local(targets, seed=2)
    )
    moved = move_palettized(palettize_local(targets[:1])["a.weight"], "meta")
    assert moved.lut.is_meta and moved.indices.is_meta


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: palettize the shared model; sum sensitivities; a model whose rank-1 weight
    is NaN; then rank 1 leaves while rank 0 waits in a collective."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=_timeout())
    clustered = []
    original = distributed.palettize_targets

    def recording(targets, *args, **kwargs):
        clustered.extend(t.qualified_name for t in targets)
        return original(targets, *args, **kwargs)

    distributed.palettize_targets = recording
    model, config = model_and_config()
    targets = find_targets(model, config)
    results = palettize_targets_distributed(targets, seed=11)
    record = {
        "clustered": clustered,
        "results": {n: (pw.lut, pw.indices) for n, pw in results.items()},
        "sensitivities": all_reduce_sensitivities({"a": torch.full((2, 3), rank + 1.0)}),
    }
    prepared, prepared_config = model_and_config()
    KMeansPalettizer(prepared, prepared_config).prepare()  # inside the group: shared out
    record["prepared"] = {name: lut for name, lut in prepared.state_dict().items() if "lut" in name}
    os.environ["COREAI_OPT_GPU_DISTRIBUTED"] = "0"  # opt out: each rank its own (other) model
    local, local_config = model_and_config(seed=rank)
    KMeansPalettizer(local, local_config).prepare()
    record["local"] = {name: lut for name, lut in local.state_dict().items() if "lut" in name}
    del os.environ["COREAI_OPT_GPU_DISTRIBUTED"]
    owners = share_by_size([t.tensor.numel() for t in targets], world)
    poisoned = next(t for t, o in zip(targets, owners, strict=True) if o == 1)
    with torch.no_grad():
        poisoned.tensor[0, 0] = float("nan")
    try:
        palettize_targets_distributed(targets, seed=11)
    except RankError as err:
        record["failure"] = (str(err), list(err.ranks), poisoned.qualified_name)
    if rank == 1:  # leave without a word: exit status 0, so the launcher keeps rank 0 alive
        torch.save(record, Path(out) / f"rank{rank}.pt")
        os._exit(0)
    try:
        RankGroup().exchange("waiting for rank 1", lambda: 1)
    except RankError as err:
        record["lost"] = (str(err), list(err.ranks))
    torch.save(record, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _timeout():
    import datetime

    return datetime.timedelta(seconds=60)


@pytest.mark.slow
def test_two_gloo_ranks_share_the_work_and_match_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("COREAI_OPT_GPU_BACKEND", "numpy")
    context = mp.start_processes(
        _worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    while not context.join(timeout=SPAWN_TIMEOUT_S):
        pass
    records = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    model, config = model_and_config()
    targets = find_targets(model, config)
    single = palettize_local(targets, seed=11)
    owners = share_by_size([t.tensor.numel() for t in targets], 2)
    for rank, record in enumerate(records):
        # each rank clustered exactly its share, and received every result
        share = {t.qualified_name for t, o in zip(targets, owners, strict=True) if o == rank}
        assert set(record["clustered"]) == share
        assert set(record["results"]) == set(single)
        for name, (lut, indices) in record["results"].items():
            assert torch.equal(lut, single[name].lut), name  # scalar: bit-identical
            assert torch.equal(indices, single[name].indices), name  # vector: same seed
        message, failed_ranks, poisoned = record["failure"]
        assert failed_ranks == [1]
        assert message.startswith("rank 1 failed during palettize_targets_distributed")
        assert poisoned in message and "NaN" in message
        assert torch.equal(record["sensitivities"]["a"], torch.full((2, 3), 3.0))
    alone, alone_config = model_and_config()
    KMeansPalettizer(alone, alone_config).prepare()
    luts = {name: lut for name, lut in alone.state_dict().items() if "lut" in name}
    scalar = [name for name in luts if not name.startswith("v")]
    assert scalar and all(set(r["prepared"]) == set(luts) for r in records)
    for name in scalar:  # prepare inside a process group: the single-process model, bit for bit
        assert all(torch.equal(r["prepared"][name], luts[name]) for r in records), name
    for name in luts:  # vector weights: one seed shared by rank 0, the same on every rank
        assert torch.equal(records[0]["prepared"][name], records[1]["prepared"][name]), name
    for rank, record in enumerate(records):  # opted out: the rank's own model, clustered alone
        own, own_config = model_and_config(seed=rank)
        KMeansPalettizer(own, own_config).prepare()
        for name, lut in own.state_dict().items():
            if "lut" in name and not name.startswith("v"):
                assert torch.equal(record["local"][name], lut), (rank, name)
    message, lost = records[0]["lost"]
    assert lost == [1] and "rank(s) [1] did not reach it" in message
    assert "waiting for rank 1" in message


def torchrun(*args, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COREAI_OPT_GPU_BACKEND": "numpy", **(env_extra or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "coreai_opt_gpu", "palettize", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_rank_dies_then_resumes_to_the_single_process_output(tiny_model, tmp_path):  # noqa: F811
    config = tmp_path / "mixed.yaml"
    vector_config().to_yaml(config)
    # the generic skeleton (same names and, for this config, the same specs as the hf one)
    # spares each rank importing transformers
    args = (tiny_model, "--config", config, "--seed", "9", "--memory-budget", "64KiB")
    args += ("--skeleton", "generic")
    out = tmp_path / "two"
    died = torchrun(
        *args,
        "--output",
        out,
        "--no-progress",
        env_extra={"COREAI_OPT_GPU_FAULT": "round-start:2:1"},
    )
    output = died.stdout + died.stderr
    assert died.returncode != 0
    assert "rank(s) [1] did not reach it" in output or re.search(r"rank\s*:\s*1 ", output), output
    shards = sorted(p.name for p in tiny_model.glob("*.safetensors"))
    assert not (out / shards[-1]).exists()  # the run stopped early

    resumed = torchrun(*args, "--output", out, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(out.rglob(f"*{TEMP_MARK}*"))
    report = json.loads((out / "palettization_report.json").read_text())
    assert report["world_size"] == 2
    assert {s["rank"] for s in report["weights"].values()} == {0, 1}

    assert cli(*args, "--output", tmp_path / "one") == 0
    assert shard_bytes(out) == shard_bytes(tmp_path / "one")  # identical, vector ones too


def test_invalid_distributed_switch_is_an_error(monkeypatch):
    model, config = model_and_config()
    monkeypatch.setenv("COREAI_OPT_GPU_DISTRIBUTED", "no")
    with pytest.raises(ValueError, match="COREAI_OPT_GPU_DISTRIBUTED='no' is not valid"):
        KMeansPalettizer(model, config).prepare()
