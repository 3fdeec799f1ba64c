"""`coreai-opt-gpu palettize`: a tiny Llama checkpoint (built here, nothing downloaded) through
the command line, compared with `prepare` + `finalize` in Python; resume, budget, bad input."""

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from coreai_opt_gpu import ExportBackend
from coreai_opt_gpu.checkpoint import job as job_module
from coreai_opt_gpu.checkpoint import load_palettized, read_state_dict
from coreai_opt_gpu.checkpoint.safetensors_io import TEMP_MARK
from coreai_opt_gpu.checkpoint.shards import CheckpointError
from coreai_opt_gpu.checkpoint.tiny import save_tiny_llama
from coreai_opt_gpu.cli import load_config, main, parse_bytes
from coreai_opt_gpu.palettization import (
    KMeansPalettizer,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
)
from coreai_opt_gpu.palettization.finalize import PackedPalettize
from coreai_opt_gpu.palettization.spec import PerGroupedChannelGranularity

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]


def mixed_config() -> KMeansPalettizerConfig:
    """4-bit grouped everywhere; 3-bit with a per-channel scale and an int8 LUT on down_proj;
    the head left dense; the embedding (padding row 0) 6-bit per tensor."""
    down = ModuleKMeansPalettizerConfig(
        op_state_spec={
            "weight": PalettizationSpec(
                n_bits=3, enable_per_channel_scale=True, lut_qspec={"dtype": "int8"}
            )
        }
    )
    embedding = ModuleKMeansPalettizerConfig(
        module_state_spec={"weight": PalettizationSpec(n_bits=6)}
    )
    return (
        KMeansPalettizerConfig.presets.w4(group_size=16)
        .set_module_name(r".*down_proj", down)
        .set_module_name(r"lm_head", None)
        .set_module_type(torch.nn.Embedding, embedding)
    )


def vector_config() -> KMeansPalettizerConfig:
    """Scalar 4-bit everywhere but two MLPs of layer 0: 2-d vectors, 3 bits (fast mode off)."""
    vector = ModuleKMeansPalettizerConfig(
        op_state_spec={"weight": PalettizationSpec(n_bits=3, cluster_dim=2)},
        enable_fast_kmeans_mode=False,
    )
    return KMeansPalettizerConfig.presets.w4(group_size=16).set_module_name(
        r"model\.layers\.0\.mlp\.(gate|up)_proj", vector
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A bf16 LlamaForCausalLM in 5 shards with config.json (embedding padding row 0),
    saved by transformers."""
    path = tmp_path_factory.mktemp("tiny") / "llama"
    save_tiny_llama(path, max_shard_size="60KB", pad_token_id=0)
    assert len(list(path.glob("*.safetensors"))) >= 4
    return path


def cli(*args) -> int:
    return main(["palettize", *map(str, args), "--no-progress"])


def python_finalized(model_dir: Path, config: KMeansPalettizerConfig, sensitivity_path=None):
    """The model loaded in its stored dtype, prepared and finalized in Python."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    palettizer = KMeansPalettizer(model.eval(), config)
    palettizer.prepare(sensitivity_path=sensitivity_path)
    palettizer.finalize(backend=ExportBackend.Torch)
    return model


def assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name  # exact: bit for bit


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.safetensors"))}


def test_output_is_the_python_finalized_model_bit_for_bit(tiny_model, tmp_path):
    config = mixed_config()
    config_path = tmp_path / "config.yaml"
    config.to_yaml(config_path)
    out = tmp_path / "out"
    assert cli(tiny_model, "--config", config_path, "--output", out) == 0
    reference = python_finalized(tiny_model, config)
    assert_same_state(read_state_dict(out), reference.state_dict())
    assert "model.embed_tokens.parametrizations.weight.0.packed" in read_state_dict(out)
    assert not reference.model.embed_tokens.weight[0].any()  # padding row decodes to zero

    # loading the output into a freshly built model gives the same model and outputs
    fresh = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.from_pretrained(out)
    ).eval()
    load_palettized(out, fresh)
    assert_same_state(fresh.state_dict(), reference.state_dict())
    tokens = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        assert torch.equal(fresh(tokens).logits, reference(tokens).logits)
    assert KMeansPalettizerConfig.from_yaml(out / "palettization.yaml") == config
    assert (out / "config.json").read_text() == (tiny_model / "config.json").read_text()


def test_report_has_per_weight_error_and_totals(tiny_model, tmp_path):
    out = tmp_path / "out"
    assert cli(tiny_model, "--config", "w4", "--group-size", "16", "--output", out) == 0
    report = json.loads((out / "palettization_report.json").read_text())
    weights = report["weights"]
    dense = transformers.AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    finalized = python_finalized(tiny_model, KMeansPalettizerConfig.presets.w4(group_size=16))
    packed = {
        name.removesuffix(".parametrizations.weight.0")
        for name, m in finalized.named_modules()
        if isinstance(m, PackedPalettize)
    }
    assert set(weights) == {f"{name}.weight" for name in packed} and len(weights) >= 15
    for name, stats in weights.items():
        module = finalized.get_submodule(name.rsplit(".", 1)[0])
        with torch.no_grad():
            w = dense.get_parameter(name).double()
            expected = float(((module.weight.double() - w) ** 2).sum() / (w**2).sum())
        assert stats["relative_mse"] == pytest.approx(expected, rel=1e-9), name
        assert stats["sqnr_db"] == pytest.approx(-10 * math.log10(expected), rel=1e-9)
        assert stats["n_bits"] == 4 and stats["dtype"] == "bfloat16"
        assert 4 <= stats["bits_per_weight"] < 6
    totals = report["totals"]
    stored = read_state_dict(out)
    assert totals["size_after_bytes"] == sum(t.numel() * t.element_size() for t in stored.values())
    assert totals["size_before_bytes"] == sum(p.numel() * 2 for p in dense.parameters())
    assert totals["compression"] == totals["size_before_bytes"] / totals["size_after_bytes"] > 2
    assert totals["elements"] == sum(math.prod(s["shape"]) for s in weights.values())
    assert totals["weights_per_s"] > 0
    assert report["skeleton"] == "hf:LlamaForCausalLM" and report["resumed_shards"] == []


def test_memory_budget_bounds_each_load_and_leaves_results_unchanged(
    tiny_model, tmp_path, monkeypatch
):
    assert cli(tiny_model, "--config", "w4", "--output", tmp_path / "whole") == 0
    loads = []
    original = job_module._load

    def recording(unit):
        tensors = original(unit)
        loads.append([t.numel() * 4 for t in tensors.values()])
        return tensors

    monkeypatch.setattr(job_module, "_load", recording)
    budget = 48 * 1024  # bytes of fp32 weights: 1-3 weights of the tiny model at a time
    out = tmp_path / "streamed"
    assert cli(tiny_model, "--config", "w4", "--output", out, "--memory-budget", budget) == 0
    assert len(loads) > 8
    assert all(sum(sizes) <= budget or len(sizes) == 1 for sizes in loads)  # one big weight
    assert shard_bytes(out) == shard_bytes(tmp_path / "whole")


def test_sensitivities_match_prepare(tiny_model, tmp_path):
    torch.manual_seed(3)
    sensitivities = {
        "model.layers.0.mlp.up_proj.weight": torch.rand(176, 64),
        "model.layers.1.self_attn.q_proj.weight": torch.rand(64, 64),
    }
    path = tmp_path / "sens.safetensors"
    save_file(sensitivities, str(path))
    out = tmp_path / "out"
    assert cli(tiny_model, "--config", "w4", "--output", out, "--sensitivities", path) == 0
    reference = python_finalized(tiny_model, KMeansPalettizerConfig.presets.w4(), path)
    assert_same_state(read_state_dict(out), reference.state_dict())


def test_generic_skeleton_on_bare_shards_matches_the_hf_skeleton(tiny_model, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for shard in tiny_model.glob("*.safetensors"):
        shutil.copy(shard, bare / shard.name)
    shards = sorted(bare.glob("*.safetensors"))
    assert cli(*shards, "--config", "w4", "-o", tmp_path / "plain") == 0
    report = json.loads((tmp_path / "plain" / "palettization_report.json").read_text())
    assert report["skeleton"] == "generic"
    # the generic skeleton sees the embedding table as a Linear (docs/cli.md), so w4 takes it
    assert "model.embed_tokens.weight" in report["weights"]
    config = tmp_path / "no-embedding.yaml"
    KMeansPalettizerConfig.presets.w4().set_module_name(r"model\.embed_tokens", None).to_yaml(
        config
    )
    assert cli(*shards, "--config", config, "-o", tmp_path / "g") == 0
    assert cli(tiny_model, "--config", config, "-o", tmp_path / "hf") == 0
    assert_same_state(read_state_dict(tmp_path / "g"), read_state_dict(tmp_path / "hf"))


def test_vector_results_are_seeded_and_independent_of_chunking(tiny_model, tmp_path):
    config_path = tmp_path / "vector.yaml"
    vector_config().to_yaml(config_path)
    args = ("--config", config_path, "--seed", "5")
    assert cli(tiny_model, *args, "--output", tmp_path / "a") == 0
    assert cli(tiny_model, *args, "--output", tmp_path / "b", "--memory-budget", "40KiB") == 0
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    weights = json.loads((tmp_path / "a" / "palettization_report.json").read_text())["weights"]
    vectors = sorted(name for name, stats in weights.items() if stats["cluster_dim"] == 2)
    assert vectors == [f"model.layers.0.mlp.{p}_proj.weight" for p in ("gate", "up")]
    # (another seed gives other vector results: tests/test_distributed.py)


@pytest.mark.slow
def test_resume_after_kill_never_takes_a_half_written_shard(tiny_model, tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "COREAI_OPT_GPU_BACKEND": "numpy",
        "COREAI_OPT_GPU_FAULT": "shard-partial:2",
    }
    command = [sys.executable, "-m", "coreai_opt_gpu", "palettize", str(tiny_model)]
    killed = subprocess.run(
        [*command, "--config", "w4", "--output", str(out), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILLed half-way through shard 2
    shards = sorted(p.name for p in tiny_model.glob("*.safetensors"))
    first = out / shards[0]
    assert first.is_file() and not (out / shards[1]).exists()
    assert list(out.glob(f"*{TEMP_MARK}*"))  # the half-written shard is under a temporary name
    first_stat = first.stat()

    assert cli(tiny_model, "--config", "w4", "--output", out) == 0
    assert first.stat().st_mtime_ns == first_stat.st_mtime_ns  # finished shard not redone
    assert not list(out.glob(f"*{TEMP_MARK}*"))
    report = json.loads((out / "palettization_report.json").read_text())
    assert report["resumed_shards"] == [shards[0]]
    assert cli(tiny_model, "--config", "w4", "--output", tmp_path / "clean") == 0
    assert shard_bytes(out) == shard_bytes(tmp_path / "clean")
    clean = json.loads((tmp_path / "clean" / "palettization_report.json").read_text())
    assert report["weights"].keys() == clean["weights"].keys()  # resumed shards' figures too
    assert cli(tiny_model, "--config", "w4", "--output", out) == 0  # all done: nothing redone
    assert first.stat().st_mtime_ns == first_stat.st_mtime_ns


def corrupt_copy(tiny_model: Path, tmp_path: Path, how: str) -> tuple[Path, Path]:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    shard = sorted(broken.glob("*.safetensors"))[1]
    if how == "missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:-7])
    return broken, shard


@pytest.mark.parametrize("how", ["missing", "truncated"])
def test_missing_or_corrupt_shard_is_named(tiny_model, tmp_path, capsys, how):
    broken, shard = corrupt_copy(tiny_model, tmp_path, how)
    assert cli(broken, "--config", "w4", "--output", tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert str(shard) in error
    assert ("not found" if how == "missing" else "not a readable safetensors") in error
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_config_that_addresses_no_tensor(tiny_model, tmp_path, capsys):
    config = KMeansPalettizerConfig(global_config=None, module_name_configs={"nothing": None})
    path = tmp_path / "none.yaml"
    config.to_yaml(path)
    assert cli(tiny_model, "--config", path, "--output", tmp_path / "out") == 2
    assert "palettizes no tensor" in capsys.readouterr().err


def test_output_directory_of_another_run_is_refused_and_kept(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(tiny_model, "--config", "w4", "--output", out) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert cli(tiny_model, "--config", "w8", "--output", out) == 2
    error = capsys.readouterr().err
    assert "holds a different run" in error and "config" in error
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert cli(tiny_model, "--config", "w4", "--output", foreign) == 2
    assert "holds no coreai-opt-gpu run" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert cli(tiny_model, "--config", "w4", "--output", tiny_model) == 2
    assert "input's directory" in capsys.readouterr().err


def test_config_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="presets: w4, w6, w8"):
        load_config("w5")
    with pytest.raises(ValueError, match="does not apply to w8"):
        load_config("w8", group_size=32)
    bad = tmp_path / "bad.yaml"
    bad.write_text("kmeans_palettization_config:\n  global_config:\n    nope: 1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: not a valid palettizer config"):
        load_config(str(bad))
    assert load_config("w6", group_size=32) == KMeansPalettizerConfig.presets.w6(group_size=32)
    assert parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("1.5MB") == 1_500_000
    with pytest.raises(Exception, match="not a size"):
        parse_bytes("lots")


def test_entry_point_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["coreai-opt-gpu"].partition(":")
    assert getattr(importlib.import_module(module), function) is main


def test_tied_weights_are_clustered_once_and_stay_tied_on_load(tmp_path, monkeypatch):
    model_dir = save_tiny_llama(
        tmp_path / "tied", layers=1, tie_word_embeddings=True, pad_token_id=3
    )
    grouped = PerGroupedChannelGranularity(axis=0, group_size=16)  # what w4 gives lm_head
    embedding = ModuleKMeansPalettizerConfig(
        module_state_spec={"weight": PalettizationSpec(n_bits=4, granularity=grouped)}
    )
    config = KMeansPalettizerConfig.presets.w4().set_module_type(torch.nn.Embedding, embedding)
    clustered = []
    real = job_module.palettize_local
    monkeypatch.setattr(
        job_module,
        "palettize_local",
        lambda targets, *a, **k: (
            clustered.extend(t.qualified_name for t in targets) or real(targets, *a, **k)
        ),
    )
    config_path = tmp_path / "config.yaml"
    config.to_yaml(config_path)
    assert cli(model_dir, "--config", config_path, "--output", tmp_path / "out") == 0
    assert "lm_head.weight" not in clustered and "model.embed_tokens.weight" in clustered
    report = json.loads((tmp_path / "out" / "palettization_report.json").read_text())
    assert report["tied_weights"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert report["weights"]["lm_head.weight"]["tied_to"] == "model.embed_tokens.weight"
    reference = python_finalized(model_dir, config)
    assert not reference.lm_head.weight[3].any()  # the padding row, under both names
    assert_same_state(read_state_dict(tmp_path / "out"), reference.state_dict())
    fresh = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.from_pretrained(model_dir)
    )
    load_palettized(tmp_path / "out", fresh)
    assert_same_state(fresh.state_dict(), reference.state_dict())
    head, embed = fresh.lm_head, fresh.model.embed_tokens
    assert head.parametrizations.weight[0] is embed.parametrizations.weight[0]  # still tied
    assert head.parametrizations.weight.original is embed.parametrizations.weight.original
    tokens = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        assert torch.equal(fresh(tokens).logits, reference(tokens).logits)

    # a checkpoint whose tied names hold different entries is refused, naming both
    key = "lm_head.parametrizations.weight.0.lut"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shard = tmp_path / "out" / index["weight_map"][key]
    from safetensors.torch import load_file

    tensors = load_file(str(shard))
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(shard), metadata={"format": "pt"})
    other = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.from_pretrained(model_dir)
    )
    with pytest.raises(CheckpointError, match=r"lm_head\.weight are one \(tied\) tensor"):
        load_palettized(tmp_path / "out", other)


def test_tied_weight_whose_owners_disagree_is_refused_like_prepare(tmp_path, capsys):
    model_dir = save_tiny_llama(tmp_path / "tied", layers=1, tie_word_embeddings=True)
    embedding = ModuleKMeansPalettizerConfig(
        module_state_spec={"weight": PalettizationSpec(n_bits=4)}  # per tensor; lm_head: g16
    )
    config = KMeansPalettizerConfig.presets.w4().set_module_type(torch.nn.Embedding, embedding)
    config_path = tmp_path / "config.yaml"
    config.to_yaml(config_path)
    with pytest.raises(ValueError, match="must agree") as caught:
        python_finalized(model_dir, config)
    assert cli(model_dir, "--config", config_path, "--output", tmp_path / "out") != 0
    assert str(caught.value) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
