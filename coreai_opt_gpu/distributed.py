"""Palettize on the ranks of a torch.distributed process group.

- `share_by_size`: which rank clusters which weight, balanced by element count (greedy
  longest-first), the same on every rank.
- `palettize_local`: `palettize_targets` with one seed per vector weight, so a weight's result
  depends on the weight, its spec and the seed only, never on the rank, shard or chunk it was
  clustered with. Scalar results never depend on them (the engine's guarantee).
- `palettize_targets_distributed`: share the weights out, palettize the local share, gather
  all results once (every rank receives every result). Bit-identical to one process for scalar
  weights; identical for vector weights given a seed (or the same `torch.manual_seed` on
  rank 0).
- `all_reduce_sensitivities`: sum per-rank calibration sensitivities before re-clustering.
- `RankGroup`: the collectives above with failures named by rank: a rank that raises reports
  its error to all; a rank that dies is found missing through the process group's store.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from coreai_opt_gpu.engine.lut_quant import QuantizedLut
from coreai_opt_gpu.palettization.palettize import (
    DEFAULT_MEMORY_BUDGET,
    PalettizedWeight,
    palettize_targets,
)
from coreai_opt_gpu.palettization.targets import WeightTarget

STORE_PREFIX = "coreai_opt_gpu"


class RankError(RuntimeError):
    """A rank of the process group failed (raised on every rank, naming the failed ones)."""

    def __init__(self, message: str, ranks: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.ranks = tuple(ranks)


def share_by_size(sizes: Sequence[int], world_size: int) -> list[int]:
    """Owner rank of each item: largest first to the least loaded rank (ties: lower index,
    lower rank). Deterministic, so every rank computes the same plan.

    sizes [n] (e.g. element counts) -> owners [n] in 0..world_size-1.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    owners = [0] * len(sizes)
    loads = [0] * world_size
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owners[i] = rank
        loads[rank] += sizes[i]
    return owners


def weight_seed(seed: int, name: str) -> int:
    """A weight's own seed in [0, 2^62), from the run's seed and the weight's name."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def palettize_local(
    targets: list[WeightTarget],
    sensitivities: dict[str, torch.Tensor] | None = None,
    progress: bool = False,
    *,
    seed: int | None = None,
    device: torch.device | str | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, PalettizedWeight]:
    """`palettize_targets` on this process, results keyed by qualified name in input order.

    Scalar weights go through one batched call. With a `seed`, each vector weight (cluster_dim
    > 1) is clustered in its own call with torch's CPU generator set to `weight_seed(seed,
    name)` (and restored after), so its result does not depend on what else this process
    clusters. Without one, vector weights draw from torch's global RNG as in
    `palettize_targets`.
    """
    scalar = [t for t in targets if t.spec.cluster_dim == 1 or seed is None]
    vector = [t for t in targets if t.spec.cluster_dim > 1 and seed is not None]
    options = {"device": device, "memory_budget": memory_budget}
    results: dict[str, PalettizedWeight] = {}
    if scalar:
        results.update(palettize_targets(scalar, sensitivities, progress, **options))
    for target in vector:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(weight_seed(seed, target.qualified_name))
            results.update(palettize_targets([target], sensitivities, False, **options))
    return {t.qualified_name: results[t.qualified_name] for t in targets}


@dataclass(frozen=True)
class _Outcome:
    """What one rank sends in a collective: its value, or the error it raised."""

    rank: int
    value: Any = None
    error: str | None = None


class RankGroup:
    """Rank, world size and failure-aware object collectives of a process group (or of a
    single process when torch.distributed is not initialized: collectives return at once)."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank(group) if self.active else 0
        self.world_size = dist.get_world_size(group) if self.active else 1
        self.global_ranks = (
            dist.get_process_group_ranks(group or dist.group.WORLD) if self.active else [0]
        )
        self._calls = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def exchange(self, phase: str, run: Any, *, to: int | None = None) -> list[Any] | None:
        """Call `run()` on every rank and collect the values in rank order: on every rank
        (all-gather), or with `to` on that rank only (None elsewhere), after a small
        all-gather of who succeeded. If `run` raises on some rank, every rank raises
        RankError naming the first such rank and its error (the failing rank chains its
        own exception)."""
        try:
            value, error, local_error = run(), None, None
        except Exception as err:  # reported to every rank below
            if not self.active:
                raise
            value, error, local_error = None, _describe(err), err
        if to is None:
            outcomes = self.all_gather(phase, _Outcome(self.rank, value, error))
        else:
            outcomes = self.all_gather(phase, _Outcome(self.rank, None, error))
        failed = [o for o in outcomes if o.error is not None]
        if failed:
            first = failed[0]
            message = f"rank {first.rank} failed during {phase}: {first.error}"
            if len(failed) > 1:
                message += f" (ranks failing: {[o.rank for o in failed]})"
            raise RankError(message, [o.rank for o in failed]) from local_error
        if to is None:
            return [o.value for o in outcomes]
        return self.gather(f"{phase} (results)", value, dst=to)

    def all_gather(self, phase: str, obj: Any) -> list[Any]:
        """`dist.all_gather_object`; a rank lost on the way raises RankError naming it."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._collective(phase, lambda: dist.all_gather_object(out, obj, group=self.group))
        return out

    def gather(self, phase: str, obj: Any, dst: int = 0) -> list[Any] | None:
        """`dist.gather_object` to group rank `dst`: [world_size] objects there, None
        elsewhere."""
        if not self.active:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.rank == dst else None
        dst_global = self.global_ranks[dst]
        self._collective(
            phase,
            lambda: dist.gather_object(obj, out, dst=dst_global, group=self.group),
        )
        return out

    def _collective(self, phase: str, call: Any) -> None:
        self._calls += 1
        key = f"{STORE_PREFIX}/{self._calls}/{phase}"
        store = _default_store()
        if store is not None:
            store.set(f"{key}/{self.global_ranks[self.rank]}", "1")
        try:
            call()
        except Exception as err:  # a peer died or hung: name it
            missing = _missing_ranks(store, key, self.global_ranks)
            who = (
                f"rank(s) {missing} did not reach it (exited or killed)"
                if missing
                else "a rank was lost (see the launcher's summary for which)"
            )
            raise RankError(
                f"rank {self.rank}: collective during {phase} failed: {who}: {err}", missing
            ) from err


def _describe(err: Exception) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {err}{where}"


def _default_store() -> Any:
    """The default process group's key-value store, or None where torch hides it."""
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None


def _missing_ranks(store: Any, key: str, ranks: Sequence[int], wait_s: float = 2.0) -> list[int]:
    """Ranks that never marked `key` in the store (after a short grace period)."""
    if store is None:
        return []
    deadline = time.monotonic() + wait_s
    while True:
        try:
            missing = [r for r in ranks if not store.check([f"{key}/{r}"])]
        except RuntimeError:  # the store itself is gone with its host
            return []
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.1)


def palettize_targets_distributed(
    targets: list[WeightTarget],
    sensitivities: dict[str, torch.Tensor] | None = None,
    progress: bool = False,
    *,
    device: torch.device | str | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    seed: int | None = None,
    group: dist.ProcessGroup | None = None,
) -> dict[str, PalettizedWeight]:
    """`palettize_targets` shared across the ranks of `group` (default: the world).

    Every rank passes the same targets (same names and shapes, e.g. replicas of one model).
    Weights are shared out by `share_by_size`, each rank clusters its share on `device`
    (default as in `palettize_targets`: CUDA, i.e. the rank's current device, for CPU weights
    when present), and one all-gather gives every rank every result, each moved to its
    weight's device. `seed` None: rank 0 draws one from torch's global RNG and shares it, so
    runs are reproducible under the same `torch.manual_seed`. Outside an initialized process
    group (or with one rank) this is `palettize_local`.
    """
    ranks = RankGroup(group)
    if ranks.world_size == 1:
        return palettize_local(
            targets,
            sensitivities,
            progress,
            seed=seed,
            device=device,
            memory_budget=memory_budget,
        )
    signature = _targets_signature(targets)
    drawn = seed if seed is not None else int(torch.randint(0, 2**62, (1,)))
    starts = ranks.all_gather("palettize_targets_distributed (plan)", (signature, drawn))
    differing = [r for r, (s, _) in enumerate(starts) if s != starts[0][0]]
    if differing:
        raise RankError(
            f"palettize_targets_distributed: ranks {differing} were given different weights "
            f"(names or shapes) than rank 0; every rank must pass the same targets",
            differing,
        )
    seed = starts[0][1]
    owners = share_by_size([t.tensor.numel() for t in targets], ranks.world_size)
    mine = [t for t, owner in zip(targets, owners, strict=True) if owner == ranks.rank]

    def cluster_share() -> dict[str, PalettizedWeight]:
        results = palettize_local(
            mine,
            sensitivities,
            progress and ranks.is_main,
            seed=seed,
            device=device,
            memory_budget=memory_budget,
        )
        return {name: move_palettized(pw, "cpu") for name, pw in results.items()}

    shares = ranks.exchange("palettize_targets_distributed (clustering)", cluster_share)
    assert shares is not None  # all-gathered
    gathered = {name: pw for share in shares for name, pw in share.items()}
    return {
        t.qualified_name: move_palettized(gathered[t.qualified_name], t.tensor.device)
        for t in targets
    }


def _targets_signature(targets: list[WeightTarget]) -> str:
    text = "\n".join(f"{t.qualified_name}:{list(t.tensor.shape)}:{t.spec}" for t in targets)
    return hashlib.sha256(text.encode()).hexdigest()


def move_palettized(pw: PalettizedWeight, device: torch.device | str) -> PalettizedWeight:
    """The same palettization with its tensors on `device`."""
    quantized = pw.lut_quantization
    if quantized is not None:
        quantized = QuantizedLut(
            quantized.lut.to(device), quantized.scale.to(device), quantized.zero_point.to(device)
        )
    return replace(
        pw,
        lut=pw.lut.to(device),
        indices=pw.indices.to(device),
        row_scale=None if pw.row_scale is None else pw.row_scale.to(device),
        lut_quantization=quantized,
    )


def torchrun_world() -> tuple[int, int, int] | None:
    """(rank, local rank, world size) from torchrun's environment, or None when not under a
    multi-process launcher."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world


def init_from_environment(timeout_s: float = 1800.0) -> torch.device:
    """Join torchrun's process group when launched by it and return this rank's compute device
    (cuda:LOCAL_RANK, or cpu). With CUDA the group is "cpu:gloo,cuda:nccl": NCCL for tensors
    between GPUs, gloo for the object collectives this module uses (they carry CPU objects,
    and gloo notices a dead peer at once); without CUDA, gloo."""
    world = torchrun_world()
    local_rank = world[1] if world else 0
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if world is not None and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return device


def all_reduce_sensitivities(
    sensitivities: dict[str, torch.Tensor], group: dist.ProcessGroup | None = None
) -> dict[str, torch.Tensor]:
    """Sum each rank's sensitivities (e.g. squared gradients of its own calibration batches)
    over the group, so every rank clusters with the same ones; returns new tensors on each
    input's device. Every rank must pass the same names and shapes. Tensors travel on CUDA
    for an NCCL-only group, else on the CPU."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return dict(sensitivities)
    on_cuda = dist.get_backend(group) == "nccl"
    travel = torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")
    reduced = {}
    for name in sorted(sensitivities):
        tensor = sensitivities[name].detach().to(travel, torch.float32, copy=True)
        dist.all_reduce(tensor, group=group)
        reduced[name] = tensor.to(sensitivities[name].device)
    return {name: reduced[name] for name in sensitivities}
