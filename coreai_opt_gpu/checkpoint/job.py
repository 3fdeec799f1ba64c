"""Palettize a safetensors checkpoint shard by shard into a finalized checkpoint.

Flow (every rank of a process group runs it; one process is a group of one):
1. Every rank opens the input (headers, memory-mapped), builds the meta skeleton and binds
   the weights the config palettizes (`skeleton.bind_targets`). Rank 0 claims the output
   directory (`rundir.RunDirectory`) and says which shards are done; the others take its
   word.
2. Pending shards go in rounds of consecutive shards holding at most world_size x
   memory_budget bytes of fp32 weights (at least one shard). A round's weights are shared
   out by `distributed.share_by_size`; each rank loads its share from the shards in units of
   at most `memory_budget` fp32 bytes, clusters each unit (`distributed.palettize_local`),
   bit-packs it (`finalize.PackedPalettize`, as `finalize` does in Python) and measures its
   error. The round's results are gathered once, on rank 0, which writes each of the round's
   shards (tensors not palettized are copied byte for byte from the input file) and then its
   done-record.
3. Rank 0 writes the index, the resolved config, the report and the input directory's small
   files.

Each output shard holds the state_dict entries of the finalized model: for a palettized
weight `<module>.<state>`, `<module>.parametrizations.<state>.original` (empty, in the stored
dtype) and `<module>.parametrizations.<state>.0.{packed,lut,row_scale,lut_scale,
lut_zero_point}`; every other tensor under its own name.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from coreai_opt_gpu import __version__
from coreai_opt_gpu.checkpoint.rundir import (
    CONFIG_NAME,
    REPORT_NAME,
    RunDirectory,
    fingerprint,
    write_json_atomic,
)
from coreai_opt_gpu.checkpoint.safetensors_io import (
    Entry,
    FileRange,
    read_header,
    temporary_path,
    tensor_entry,
    write_safetensors,
    write_text_atomic,
)
from coreai_opt_gpu.checkpoint.shards import (
    INDEX_NAME,
    CheckpointError,
    CheckpointSource,
    Shard,
    open_checkpoint,
    open_shard,
)
from coreai_opt_gpu.checkpoint.skeleton import (
    Binding,
    BoundTarget,
    bind_targets,
    build_skeleton,
    runtime_target,
    state_prefix,
)
from coreai_opt_gpu.distributed import RankGroup, palettize_local, share_by_size
from coreai_opt_gpu.palettization.config import KMeansPalettizerConfig
from coreai_opt_gpu.palettization.finalize import PackedPalettize
from coreai_opt_gpu.palettization.palettize import DEFAULT_MEMORY_BUDGET, PalettizedWeight
from coreai_opt_gpu.palettization.palettizer import padding_rows_zero
from coreai_opt_gpu.palettization.parametrization import FakePalettize
from coreai_opt_gpu.palettization.targets import WeightTarget
from coreai_opt_gpu.palettization.tied import SharedWeight

FAULT_ENV = "COREAI_OPT_GPU_FAULT"
# other weight formats and this tool's own outputs are not copied from the input directory
_NOT_COPIED = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_STATS_PIECE = 1 << 22  # elements per piece when measuring the error


@dataclass(frozen=True)
class JobOptions:
    """What to palettize and how (the CLI's arguments)."""

    inputs: tuple[Path, ...]
    output: Path
    config: KMeansPalettizerConfig
    seed: int = 0
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    device: torch.device | None = None  # None: cuda:LOCAL_RANK when present, else cpu
    sensitivities: Path | None = None
    skeleton: str = "auto"
    model_config: Path | None = None
    progress: bool = True


@dataclass
class _Plan:
    source: CheckpointSource
    skeleton: str
    binding: Binding
    by_shard: dict[str, list[BoundTarget]] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightOutput:
    """A palettized weight's state_dict entries (name -> CPU tensor) and its figures."""

    entries: tuple[tuple[str, torch.Tensor], ...]
    stats: dict[str, Any]


def palettize_checkpoint(options: JobOptions, group: Any = None) -> dict[str, Any]:
    """Run the job (see module docstring) on this process's rank; returns the report (on
    every rank). Errors: CheckpointError for bad input/output, RankError when a rank fails
    or dies (naming it). Shards finished before an error stay done."""
    timings = {"started": time.perf_counter()}
    ranks = RankGroup(group)
    device = _device(options.device)
    holder: dict[str, Any] = {}

    def open_job() -> str:
        plan = _open(options)
        holder["plan"] = plan
        if ranks.is_main:
            print_unmatched(plan.binding)
            holder["rundir"] = RunDirectory.claim(
                options.output, _fingerprint(plan, options), list(options.inputs)
            )
            done = {
                s.name: record
                for s in plan.source.shards
                if (record := holder["rundir"].finished(s.name)) is not None
            }
            holder["done"] = done
        return _signature(plan)

    signatures = ranks.exchange("opening the input and the output directory", open_job)
    assert signatures is not None
    differing = [r for r, s in enumerate(signatures) if s != signatures[0]]
    if differing:
        raise CheckpointError(
            f"ranks {differing} see a different input or config than rank 0 (shards, headers "
            "or weights differ); every rank must read the same files"
        )
    plan: _Plan = holder["plan"]
    done_names = ranks.exchange(
        "sharing the resume state",
        lambda: sorted(holder["done"]) if ranks.is_main else None,
    )
    assert done_names is not None
    done = set(done_names[0])
    timings["opened"] = time.perf_counter()
    pending = [s for s in plan.source.shards if s.name not in done]
    rounds = plan_rounds(pending, plan.by_shard, ranks.world_size, options.memory_budget)
    total = sum(b.info.numel for s in pending for b in plan.by_shard[s.name])
    bar = tqdm(
        total=total,
        desc="Palettizing",
        unit=" weights",
        unit_scale=True,
        disable=not (options.progress and ranks.is_main),
    )
    records = dict(holder.get("done", {}))
    try:
        for number, shards in enumerate(rounds, 1):
            _fault("round-start", ranks.rank)
            targets = [b for s in shards for b in plan.by_shard[s.name]]
            groups = tie_groups(targets)  # a tied tensor's names go to one rank, together
            owners = share_by_size([g[0].info.numel for g in groups], ranks.world_size)
            mine = [g for g, o in zip(groups, owners, strict=True) if o == ranks.rank]
            names = f"{shards[0].name}" + (f" .. {shards[-1].name}" if len(shards) > 1 else "")
            on_unit = bar.update if ranks.world_size == 1 else None
            gathered = ranks.exchange(
                f"round {number}/{len(rounds)} ({names})",
                lambda mine=mine, on_unit=on_unit: _cluster_share(mine, options, device, on_unit),
                to=0,
            )
            if ranks.is_main:
                assert gathered is not None
                outputs = {name: out for share in gathered for name, out in share.items()}
                for rank, share in enumerate(gathered):
                    for out in share.values():
                        out.stats["rank"] = rank
                if ranks.world_size > 1:
                    bar.update(sum(b.info.numel for b in targets))
                for shard in shards:
                    records[shard.name] = _write_shard(
                        holder["rundir"], shard, plan.by_shard[shard.name], outputs
                    )
                    bar.set_postfix_str(f"wrote {shard.name}", refresh=True)
        bar.close()
        timings["palettized"] = time.perf_counter()
        report = ranks.exchange(
            "writing the index, config and report",
            lambda: (
                _finish(holder, plan, options, records, timings, ranks, device, total)
                if ranks.is_main
                else None
            ),
        )
    finally:
        bar.close()
    assert report is not None
    return report[0]


def plan_rounds(
    pending: list[Shard],
    by_shard: dict[str, list[BoundTarget]],
    world_size: int,
    memory_budget: int,
) -> list[list[Shard]]:
    """Consecutive pending shards grouped so each round holds at most world_size x
    memory_budget bytes of fp32 weights to cluster (a shard larger than that goes alone)."""
    rounds: list[list[Shard]] = []
    limit = world_size * memory_budget
    used = 0
    for shard in pending:
        size = sum(b.info.numel * 4 for b in by_shard[shard.name])
        if rounds and used + size <= limit:
            rounds[-1].append(shard)
            used += size
        else:
            rounds.append([shard])
            used = size
    return rounds


def _device(device: torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _open(options: JobOptions) -> _Plan:
    source = open_checkpoint(list(options.inputs))
    skeleton, kind = build_skeleton(options.skeleton, source, options.model_config)
    binding = bind_targets(skeleton, options.config, source, kind)
    plan = _Plan(source, kind, binding, {s.name: [] for s in source.shards})
    for bound in binding.targets:
        plan.by_shard[bound.info.shard].append(bound)
    if options.sensitivities is not None:
        sensitivities = open_shard(options.sensitivities)
        palettized = {b.name for b in binding.targets}
        unknown = sorted({t.name for t in sensitivities.tensors} - palettized)
        if unknown:
            raise CheckpointError(
                f"{options.sensitivities}: sensitivities for weights that are not palettized: "
                f"{unknown[:5]}; palettized weights: {sorted(palettized)[:5]}"
            )
    return plan


def print_unmatched(binding: Binding) -> None:
    if binding.unmatched_config:
        warnings.warn(
            f"config entries that match no module of the model: {list(binding.unmatched_config)}",
            stacklevel=2,
        )


def _fingerprint(plan: _Plan, options: JobOptions) -> dict[str, Any]:
    shards = [(s.name, s.header.file_size, s.header.sha256) for s in plan.source.shards]
    sensitivities = None
    if options.sensitivities is not None:
        header = read_header(options.sensitivities)
        sensitivities = (options.sensitivities.name, header.file_size, header.sha256)
    return fingerprint(shards, options.config.to_dict(), options.seed, sensitivities)


def _signature(plan: _Plan) -> str:
    shards = [(s.name, s.header.sha256) for s in plan.source.shards]
    return repr((shards, [(b.name, str(b.target.spec)) for b in plan.binding.targets]))


def tie_groups(targets: list[BoundTarget]) -> list[list[BoundTarget]]:
    """Bound weights grouped by stored tensor, in order: a tied tensor's names (module order,
    the first is the one clustered, as in `prepare`) form one group."""
    groups: dict[str, list[BoundTarget]] = {}
    for bound in targets:
        groups.setdefault(bound.info.name, []).append(bound)
    return list(groups.values())


def _cluster_share(
    mine: list[list[BoundTarget]],
    options: JobOptions,
    device: torch.device,
    on_unit: Any,
) -> dict[str, WeightOutput]:
    """Load, cluster, pack and measure this rank's weights, `memory_budget` fp32 bytes at a
    time. A tied tensor is clustered once, under its first name, and every name gets the same
    entries (its padding row zero if any owner is an embedding with one), as `prepare` +
    `finalize` give them."""
    outputs: dict[str, WeightOutput] = {}
    for unit in _units(mine, options.memory_budget):
        members = [b for group in unit for b in group]
        tensors = _load(members)
        sensitivities = None
        if options.sensitivities is not None:
            sensitivities = _tied_sensitivities(options.sensitivities, unit)
        targets = {b.name: runtime_target(b, tensors[b.name]) for b in members}
        results = palettize_local(
            [targets[group[0].name] for group in unit],
            sensitivities,
            seed=options.seed,
            device=device,
            memory_budget=options.memory_budget,
        )
        for group in unit:
            first, owners = group[0], tuple(targets[b.name] for b in group)
            tie = SharedWeight(owners[0], owners)
            output = finalize_weight(owners[0], padding_rows_zero(tie, results[first.name]))
            output.stats["shard"] = first.info.shard
            outputs[first.name] = output
            for bound, target in zip(group[1:], owners[1:], strict=True):  # same entries
                outputs[bound.name] = _renamed(output, owners[0], target, first.name)
        del tensors, targets, results
        if on_unit is not None:
            on_unit(sum(b.info.numel for b in members))
    return outputs


def _renamed(
    output: WeightOutput, first: WeightTarget, target: WeightTarget, first_name: str
) -> WeightOutput:
    """A tied name's output: the first name's entries under its own prefix."""
    old, new = state_prefix(first), state_prefix(target)
    entries = tuple((new + key.removeprefix(old), value) for key, value in output.entries)
    return WeightOutput(entries, {**output.stats, "tied_to": first_name})


def _tied_sensitivities(
    path: Path, unit: list[list[BoundTarget]]
) -> dict[str, torch.Tensor] | None:
    """The sensitivities of the unit's clustered weights, keyed by their first name; a tied
    tensor's may be stored under any of its names (two different ones are an error)."""
    names = [b.name for group in unit for b in group]
    stored = _load_named(path, names, True)
    chosen: dict[str, torch.Tensor] = {}
    for group in unit:
        found = [b.name for b in group if b.name in stored]
        for other in found[1:]:
            if not torch.equal(stored[other], stored[found[0]]):
                raise CheckpointError(
                    f"{path}: {found[0]} and {other} are one (tied) tensor but their "
                    "sensitivities differ; store one of them"
                )
        if found:
            chosen[group[0].name] = stored[found[0]]
    return chosen


def _units(groups: list[list[BoundTarget]], budget: int) -> list[list[list[BoundTarget]]]:
    """Consecutive tie groups holding at most `budget` fp32 bytes (at least one group)."""
    units: list[list[list[BoundTarget]]] = []
    used = 0
    for group in groups:
        size = group[0].info.numel * 4
        if units and used + size <= budget:
            units[-1].append(group)
            used += size
        else:
            units.append([group])
            used = size
    return units


def _load(unit: list[BoundTarget]) -> dict[str, torch.Tensor]:
    """The unit's tensors by weight name, read from their memory-mapped shards (a tied
    weight's stored tensor once)."""
    stored: dict[str, torch.Tensor] = {}
    by_path: dict[Path, set[str]] = {}
    for bound in unit:
        by_path.setdefault(bound.info.path, set()).add(bound.info.name)
    for path, names in by_path.items():
        stored.update(_load_named(path, sorted(names)))
    return {bound.name: stored[bound.info.name] for bound in unit}


def _load_named(
    path: Path, names: list[str], present_only: bool = False
) -> dict[str, torch.Tensor]:
    """Tensors `names` of a safetensors file (with `present_only`, those it holds)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            if present_only:
                held = set(handle.keys())
                names = [n for n in names if n in held]
            return {name: handle.get_tensor(name) for name in names}
    except Exception as err:  # the file changed or vanished since it was opened
        raise CheckpointError(f"{path}: reading {names[:3]} failed: {err}") from None


def finalize_weight(target: WeightTarget, palettized: PalettizedWeight) -> WeightOutput:
    """The finalized state_dict entries of one weight (`palettized` as `prepare` installs
    it, padding rows already zero, packed as `finalize_torch` packs it) and its bits, relative
    MSE and SQNR (of the decoded weight in the stored dtype)."""
    tensor = target.tensor
    packed = PackedPalettize(FakePalettize(palettized), tensor.dtype)
    prefix = state_prefix(target)
    entries = [(f"{prefix}.original", torch.empty(0, dtype=tensor.dtype))]
    entries += [(f"{prefix}.0.{k}", v.detach().cpu()) for k, v in packed.state_dict().items()]
    decoded = packed(torch.empty(0, dtype=tensor.dtype, device=tensor.device))
    relative_mse = _relative_mse(decoded, tensor)
    spec = palettized.spec
    stats = {
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "n_bits": spec.n_bits,
        "cluster_dim": spec.cluster_dim,
        "bits_per_weight": 8 * packed.nbytes / tensor.numel(),
        "relative_mse": relative_mse,
        "sqnr_db": None if relative_mse == 0 else -10 * math.log10(relative_mse),
        "dense_bytes": tensor.numel() * tensor.element_size(),
        "stored_bytes": packed.nbytes,
        "spec": spec.model_dump(mode="json"),
    }
    return WeightOutput(tuple(entries), stats)


def _relative_mse(decoded: torch.Tensor, dense: torch.Tensor) -> float:
    """sum((decoded - dense)^2) / sum(dense^2), accumulated in float64 piece by piece."""
    error = energy = 0.0
    flat_decoded, flat_dense = decoded.reshape(-1), dense.reshape(-1)
    for start in range(0, flat_dense.numel(), _STATS_PIECE):
        d = flat_dense[start : start + _STATS_PIECE].double()
        q = flat_decoded[start : start + _STATS_PIECE].to(d.device).double()
        error += float(((q - d) ** 2).sum())
        energy += float((d**2).sum())
    return error / energy if energy > 0 else 0.0


def _write_shard(
    rundir: RunDirectory,
    shard: Shard,
    bound: list[BoundTarget],
    outputs: dict[str, WeightOutput],
) -> dict[str, Any]:
    """Write one finalized shard (atomically) and its done-record; returns the record. A
    stored tensor palettized under its own name is replaced by its entries; the entries of
    weights tied to it follow it (it stays, unless palettized itself)."""
    by_storage: dict[str, list[BoundTarget]] = {}
    for b in bound:
        by_storage.setdefault(b.info.name, []).append(b)
    entries: list[Entry] = []
    weights = {}
    for info in shard.tensors:
        group = by_storage.get(info.name, [])
        if all(b.name != info.name for b in group):
            data = FileRange(shard.path, info.begin, info.end)
            entries.append(Entry(info.name, info.dtype, info.shape, data))
        for b in group:
            entries.extend(tensor_entry(key, value) for key, value in outputs[b.name].entries)
            weights[b.name] = outputs[b.name].stats
    metadata = {"format": "pt", "coreai_opt_gpu": __version__, "source_shard": shard.name}
    path = rundir.path / shard.name
    write_safetensors(path, entries, metadata, on_progress=_partial_fault())
    header = read_header(path)
    record = {
        "shard": shard.name,
        "file_size": header.file_size,
        "header_sha256": header.sha256,
        "tensors": [e.name for e in entries],
        "bytes_in": sum(t.end - t.begin for t in shard.tensors),
        "bytes_out": sum(e.nbytes for e in entries),
        "weights": weights,
    }
    rundir.finish_shard(shard.name, record)
    _fault("shard-written", 0)
    return record


def _finish(
    holder: dict[str, Any],
    plan: _Plan,
    options: JobOptions,
    records: dict[str, dict[str, Any]],
    timings: dict[str, float],
    ranks: RankGroup,
    device: torch.device,
    clustered: int,
) -> dict[str, Any]:
    """Rank 0: index, copied input files, resolved config and report."""
    rundir: RunDirectory = holder["rundir"]
    ordered = [records[s.name] for s in plan.source.shards]
    if len(ordered) > 1 or plan.source.index is not None:
        index = {
            "metadata": {
                "total_size": sum(r["bytes_out"] for r in ordered),
                "format": f"coreai-opt-gpu {__version__} palettized",
            },
            "weight_map": {name: r["shard"] for r in ordered for name in r["tensors"]},
        }
        write_json_atomic(rundir.path / INDEX_NAME, index)
    if plan.source.directory is not None:
        _copy_small_files(plan.source.directory, rundir.path)
    write_text_atomic(rundir.path / CONFIG_NAME, options.config.to_yaml())
    seconds = {
        "seconds": time.perf_counter() - timings["started"],
        "seconds_opening": timings["opened"] - timings["started"],
        "seconds_palettizing": timings["palettized"] - timings["opened"],
    }
    report = build_report(plan, options, ordered, seconds, ranks.world_size, device, clustered)
    report["resumed_shards"] = sorted(holder.get("done", {}))
    write_json_atomic(rundir.path / REPORT_NAME, report)
    return report


def build_report(
    plan: _Plan,
    options: JobOptions,
    records: list[dict[str, Any]],
    seconds: dict[str, float],
    world_size: int,
    device: torch.device,
    clustered: int,
) -> dict[str, Any]:
    """Per weight: bits, relative MSE, SQNR, sizes; totals: sizes before and after, times of
    this invocation (all; opening the input, skeleton and output directory; palettizing:
    loading, clustering, packing, gathering and writing shards) and weights (elements)
    clustered per second of palettizing."""
    weights = {name: stats for r in records for name, stats in r["weights"].items()}
    elements = sum(math.prod(s["shape"]) for s in weights.values())
    dense = sum(s["dense_bytes"] for s in weights.values())
    stored = sum(s["stored_bytes"] for s in weights.values())
    before = sum(r["bytes_in"] for r in records)
    after = sum(r["bytes_out"] for r in records)
    return {
        "tool": f"coreai-opt-gpu {__version__}",
        "input": [str(s.path) for s in plan.source.shards],
        "skeleton": plan.skeleton,
        "config": CONFIG_NAME,
        "seed": options.seed,
        "world_size": world_size,
        "device": str(device),
        "memory_budget": options.memory_budget,
        "weights": weights,
        "tied_weights": plan.binding.tied,
        "unmatched_config_entries": list(plan.binding.unmatched_config),
        "totals": {
            "weights": len(weights),
            "elements": elements,
            "size_before_bytes": before,
            "size_after_bytes": after,
            "compression": before / after if after else None,
            "palettized_dense_bytes": dense,
            "palettized_stored_bytes": stored,
            "bits_per_weight": 8 * stored / elements if elements else None,
            **seconds,
            "elements_clustered_this_run": clustered,
            "weights_per_s": (clustered / seconds["seconds_palettizing"] if clustered else None),
            "shards": len(records),
        },
    }


def _copy_small_files(source: Path, output: Path) -> None:
    """config.json, tokenizer and other small files of the model directory, atomically."""
    own = {INDEX_NAME, CONFIG_NAME, REPORT_NAME}
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name in own or path.name.endswith(_NOT_COPIED):
            continue
        target = output / path.name
        tmp = temporary_path(target)
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)


_fault_counts: dict[str, int] = {}


def _fault(point: str, rank: int) -> None:
    """Fault injection for tests: COREAI_OPT_GPU_FAULT=point:count[:rank] kills this process
    (SIGKILL) at the count-th time it reaches `point` (shard-written, shard-partial,
    round-start) on `rank` (default 0)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in (
        "shard-written",
        "shard-partial",
        "round-start",
    ):
        raise ValueError(
            f"{FAULT_ENV}={spec!r}: expected point:count[:rank] with point one of "
            "shard-written, shard-partial, round-start"
        )
    if parts[0] != point or rank != (int(parts[2]) if len(parts) == 3 else 0):
        return
    _fault_counts[point] = _fault_counts.get(point, 0) + 1
    if _fault_counts[point] == int(parts[1]):
        os.kill(os.getpid(), signal.SIGKILL)


def _partial_fault() -> Any:
    """A write-progress hook reaching `shard-partial` once, half-way through a file."""
    reached = []

    def hook(written: int, total: int) -> None:
        if 2 * written >= total and not reached:
            reached.append(True)
            _fault("shard-partial", 0)

    return hook
