"""Command line: `coreai-opt-gpu palettize INPUT --config CONFIG --output DIR` (also
`python -m coreai_opt_gpu`), on one process or under `torchrun --nproc-per-node N`.

    coreai-opt-gpu palettize ./llama-7b --config w4 --group-size 16 --output ./llama-7b-w4
    torchrun --nproc-per-node 8 -m coreai_opt_gpu palettize ./llama-70b --config cfg.yaml \
        --output ./llama-70b-w4
    coreai-opt-gpu tiny-model ./tiny          # a small random Llama checkpoint, built locally

See docs/cli.md. Exit status: 0 done, 2 bad arguments or input/output (the message names the
file), 3 a rank failed (the message names it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from coreai_opt_gpu.checkpoint.job import JobOptions, palettize_checkpoint
from coreai_opt_gpu.checkpoint.rundir import REPORT_NAME
from coreai_opt_gpu.checkpoint.shards import CheckpointError
from coreai_opt_gpu.checkpoint.skeleton import SKELETONS
from coreai_opt_gpu.distributed import RankError, RankGroup, init_from_environment
from coreai_opt_gpu.palettization.config import KMeansPalettizerConfig
from coreai_opt_gpu.palettization.palettize import DEFAULT_MEMORY_BUDGET

PRESETS = ("w4", "w6", "w8")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_bytes(text: str) -> int:
    """'2GiB', '512MiB', '1.5GB', '1000000' -> bytes (> 0)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; write e.g. 2GiB, 512MiB, 1.5GB or a byte count"
        )
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the memory budget must be > 0 bytes")
    return value


def load_config(
    text: str, group_size: int | None = None, axis: int | None = 0
) -> KMeansPalettizerConfig:
    """A YAML file as written by `to_yaml`, or a preset name (w4, w6 with `group_size` and
    `axis`; w8 per tensor). CheckpointError naming the file or the allowed presets."""
    path = Path(text)
    if path.is_file():
        if group_size is not None:
            raise CheckpointError("--group-size applies to presets only, not to a YAML config")
        try:
            config = KMeansPalettizerConfig.from_yaml(path)
        except Exception as err:  # pydantic / YAML errors, shown with the file name
            raise CheckpointError(f"{path}: not a valid palettizer config: {err}") from None
        if config is None:
            raise CheckpointError(f"{path}: the config file is empty")
        return config
    if text not in PRESETS:
        raise CheckpointError(
            f"--config {text!r}: no such file, and not a preset (presets: {', '.join(PRESETS)})"
        )
    preset = getattr(KMeansPalettizerConfig.presets, text)
    if text == "w8":
        if group_size is not None:
            raise CheckpointError("--group-size does not apply to w8 (one LUT per tensor)")
        return preset()
    return preset(axis=axis, group_size=16 if group_size is None else group_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coreai-opt-gpu", description="k-means palettization of checkpoints"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "palettize",
        help="palettize a safetensors checkpoint into a finalized one",
        description="Palettize a Hugging Face model directory or safetensors shards, shard by "
        "shard, into a finalized checkpoint with a report; resumes an interrupted run. Under "
        "torchrun the weights are shared out across the ranks.",
    )
    run.add_argument("inputs", nargs="+", type=Path, help="model directory, index, or shards")
    run.add_argument("--config", required=True, help=f"YAML file or preset ({', '.join(PRESETS)})")
    run.add_argument("--output", "-o", required=True, type=Path, help="output directory")
    run.add_argument("--group-size", type=int, help="presets w4/w6: channels per LUT (16)")
    run.add_argument("--axis", type=int, default=0, help="presets w4/w6: grouping axis (0)")
    run.add_argument("--seed", type=int, default=0, help="vector (cluster_dim > 1) seed (0)")
    run.add_argument(
        "--memory-budget",
        type=parse_bytes,
        default=DEFAULT_MEMORY_BUDGET,
        help="bytes of fp32 weights clustered at once per process (default 2GiB)",
    )
    run.add_argument("--device", help="clustering device (default: cuda:LOCAL_RANK, or cpu)")
    run.add_argument("--sensitivities", type=Path, help="safetensors of k-means sample weights")
    run.add_argument(
        "--skeleton",
        choices=SKELETONS,
        default="auto",
        help="module types: from config.json (hf), from tensor names (generic), or auto",
    )
    run.add_argument("--model-config", type=Path, help="config.json for bare shards")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--dist-timeout", type=float, default=1800.0, help="collective timeout in seconds"
    )
    tiny = commands.add_parser(
        "tiny-model", help="write a small random Llama checkpoint (no download)"
    )
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--hidden", type=int, default=64)
    tiny.add_argument("--intermediate", type=int, default=176)
    tiny.add_argument("--vocab", type=int, default=128)
    tiny.add_argument("--shard-size", default="100KB", help="max shard size (100KB)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "tiny-model":
        from coreai_opt_gpu.checkpoint.tiny import save_tiny_llama

        save_tiny_llama(
            args.directory,
            layers=args.layers,
            hidden=args.hidden,
            intermediate=args.intermediate,
            vocab=args.vocab,
            max_shard_size=args.shard_size,
        )
        print(f"wrote a tiny LlamaForCausalLM checkpoint to {args.directory}")
        return 0
    return _palettize(args)


def _palettize(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.group_size, args.axis)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started_group = not torch.distributed.is_initialized()
    rank = 0
    try:
        device = init_from_environment(args.dist_timeout)
        rank = RankGroup().rank
        options = JobOptions(
            inputs=tuple(args.inputs),
            output=args.output,
            config=config,
            seed=args.seed,
            memory_budget=args.memory_budget,
            device=torch.device(args.device) if args.device else device,
            sensitivities=args.sensitivities,
            skeleton=args.skeleton,
            model_config=args.model_config,
            progress=not args.no_progress,
        )
        report = palettize_checkpoint(options)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except OSError as err:  # e.g. the disk is full; the message names the file
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if started_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank == 0:
        print(summary(report, args.output))
    return 0


def summary(report: dict, output: Path) -> str:
    """One paragraph of the report's totals."""
    t = report["totals"]
    resumed = len(report.get("resumed_shards", []))
    mib = 2**20
    lines = [
        f"palettized {t['weights']} weights ({t['elements'] / 1e6:.2f}M values) in "
        f"{t['shards']} shards ({resumed} resumed) on {report['world_size']} process(es), "
        f"{report['device']}",
        f"size {t['size_before_bytes'] / mib:.2f} MiB -> {t['size_after_bytes'] / mib:.2f} MiB"
        + (f" ({t['compression']:.2f}x)" if t["compression"] else "")
        + (f", {t['bits_per_weight']:.2f} bits per palettized weight" if t["elements"] else ""),
        f"time {t['seconds']:.2f} s"
        + (f", {t['weights_per_s'] / 1e6:.3f}M weights/s" if t["weights_per_s"] else ""),
        f"report: {output / REPORT_NAME}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
