"""`KMeansPalettizer`: palettize a model's weights in place with fake-palettization."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu.config.resolver import unmatched_module_keys
from coreai_opt_gpu.config.trace import PALETTIZABLE_OPS, static_ops, trace_ops
from coreai_opt_gpu.export import ExportBackend
from coreai_opt_gpu.palettization.config import KMeansPalettizerConfig
from coreai_opt_gpu.palettization.coverage import skipped_summary, skipped_weights
from coreai_opt_gpu.palettization.finalize import CompressionReport, finalize_torch
from coreai_opt_gpu.palettization.finalize_coreai import finalize_coreai
from coreai_opt_gpu.palettization.palettize import (
    DEFAULT_MEMORY_BUDGET,
    PalettizedWeight,
    check_memory_budget,
    palettize_targets,
)
from coreai_opt_gpu.palettization.parametrization import FakePalettize
from coreai_opt_gpu.palettization.sensitivity import load_sensitivities
from coreai_opt_gpu.palettization.sensitivity import (
    save_sensitivities as write_sensitivities,
)
from coreai_opt_gpu.palettization.targets import WeightTarget, find_targets
from coreai_opt_gpu.palettization.tied import SharedWeight, check_owners_agree, shared_weights

PREPARED_MARK = "_coreai_opt_gpu_prepared"
SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.MultiheadAttention,
)
SUPPORTED_OPS = tuple(dict.fromkeys(PALETTIZABLE_OPS.values()))
logger = logging.getLogger(__name__)


class Lifecycle(Enum):
    """What the palettizer is doing: nothing, a training loop, or a calibration."""

    IDLE = "idle"
    TRAINING = "training"
    CALIBRATING = "calibrating"


class KMeansPalettizer:
    """Finds the weights a config palettizes (coreai_opt's resolution, from the ops a forward
    calls), clusters all of them in a few batched engine calls and installs a `FakePalettize`
    parametrization on each.

    Ops: linear, conv1d/2d/3d, conv_transpose1d/2d/3d and nn.MultiheadAttention (the op
    `multi_head_attention_forward`, with in_proj and out_proj weights), including functional
    calls; any tensor through a module's `module_state_spec` (e.g. an nn.Embedding weight).
    A tensor several modules hold (tied weights) is clustered once and shares one
    parametrization under every name (`tied`).
    """

    def __init__(self, model: nn.Module, config: KMeansPalettizerConfig | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.config = config if config is not None else KMeansPalettizerConfig()
        self.report: CompressionReport | None = None
        self._targets: list[WeightTarget] = []  # one per palettized tensor (its primary)
        self._groups: list[SharedWeight] = []  # every name of each palettized tensor
        self._sensitivities: dict[str, torch.Tensor] | None = None
        self._lifecycle = Lifecycle.IDLE
        self._step_count = 0

    @classmethod
    def supported_modules(cls) -> tuple[type[nn.Module], ...]:
        """Module types whose ops are palettizable (what `prepare` infers without example
        inputs); any module's tensors are reachable through `module_state_spec`."""
        return SUPPORTED_MODULES

    @classmethod
    def get_op_type_resolver(cls) -> Callable[[Callable], str | None]:
        """A function mapping a torch function to its palettizable op type (None if none)."""
        return PALETTIZABLE_OPS.get

    def prepare(
        self,
        example_inputs: tuple = (),
        sensitivity_path: str | Path | None = None,
        num_workers: int = 1,
        *,
        device: torch.device | str | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> nn.Module:
        """Palettize the model in place and return it.

        example_inputs: one forward of them (eval mode, no gradients, training flags
        restored: no statistics move) records the ops each module calls and the tensors it
        passes them, which the config resolves (functional calls included). Without example
        inputs the ops are inferred from module types (standard layers only).
        sensitivity_path: k-means sample weights, a file in our format (safetensors,
        "<module>.<weight>") or coreai_opt's (`torch.save`, "<module>.parametrizations.
        <weight>.original"); entries for parameters that are not palettized are ignored.
        num_workers: accepted for compatibility (>= 1); all blocks are clustered together.
        device: where clustering runs (default: CUDA for a CPU-resident model when a GPU is
        present, else the model's device); memory_budget: bytes of fp32 weight blocks sent
        to it at once, and the bound of the engine's working memory per call (on the host at
        most 32 MiB of it, see `palettize.blocks_per_call`).

        Warns once about weights the config addresses that no palettizable op uses (module,
        parameter, why: `coverage`), and when nothing is palettized at all. Errors: weights on
        the meta device; a tied weight whose owners' configs disagree (`tied`).
        """
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
        check_memory_budget(memory_budget)
        if is_prepared(self.model):
            raise RuntimeError(
                "the model is already prepared for palettization; prepare it "
                "once, or finalize it first"
            )
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        trace = trace_ops(self.model, example_inputs) if example_inputs else static_ops(self.model)
        unmatched = unmatched_module_keys(self.config, self.model)
        if unmatched:
            warnings.warn(
                f"config entries that match no module of the model: {unmatched}", stacklevel=2
            )
        targets = find_targets(self.model, self.config, trace)
        groups = check_owners_agree(shared_weights(targets), self.model, self.config, trace)
        _check_weights_have_data(groups)
        primaries = [group.primary for group in groups]
        sensitivities = None
        if sensitivity_path is not None:
            sensitivities = self._read_sensitivities(sensitivity_path, groups)
        results = _cluster(
            primaries, sensitivities, progress=True, device=device, memory_budget=memory_budget
        )
        skipped = skipped_weights(self.model, self.config, trace, targets)
        self._targets = primaries
        self._groups = groups
        self._sensitivities = sensitivities
        for group in groups:
            name = group.primary.qualified_name
            fake = FakePalettize(padding_rows_zero(group, results[name]))
            fake.tensor_fqn = name
            for target in group.targets:  # tied weights: one parametrization, every name
                parametrize.register_parametrization(
                    target.module, target.state_name, fake, unsafe=True
                )
        if skipped:
            warnings.warn(skipped_summary(skipped), stacklevel=2)
        if not groups:
            warnings.warn(
                f"prepare palettized no weight of this {type(self.model).__name__}: the config "
                f"resolves no weight that a palettizable op ({', '.join(SUPPORTED_OPS)}) or a "
                f"module_state_spec reaches; see config.build_module_config_dict(model) and "
                f"palettization.targets.resolve_weights(model, config)",
                stacklevel=2,
            )
        self.model.register_buffer(PREPARED_MARK, torch.tensor(True), persistent=False)
        return self.model

    def _read_sensitivities(
        self, path: str | Path, groups: list[SharedWeight]
    ) -> dict[str, torch.Tensor]:
        """The file's sensitivities of palettized weights, keyed by each tensor's primary name
        (a tied weight's may come under any of its names; two different ones are an error);
        a key naming no tensor of the model is an error, one naming a tensor that is not
        palettized is ignored (coreai_opt files hold every parameter)."""
        sensitivities = load_sensitivities(path)
        primary_of = {name: g.primary.qualified_name for g in groups for name in g.names}
        tensors = {n for n, _ in self.model.named_parameters(remove_duplicate=False)}
        tensors |= {n for n, _ in self.model.named_buffers(remove_duplicate=False)}
        unknown = sorted(set(sensitivities) - set(primary_of) - tensors)
        if unknown:
            raise ValueError(
                f"{path}: sensitivities for tensors the model does not have: {unknown[:5]}; "
                f"palettized weights: {sorted(primary_of)[:5]}"
            )
        ignored = sorted(set(sensitivities) - set(primary_of))
        if ignored:
            logger.info("%s: ignoring sensitivities of weights not palettized: %s", path, ignored)
        chosen: dict[str, tuple[str, torch.Tensor]] = {}
        for name, sensitivity in sensitivities.items():
            primary = primary_of.get(name)
            if primary is None:
                continue
            if primary in chosen and not torch.equal(chosen[primary][1], sensitivity):
                raise ValueError(
                    f"{path}: {chosen[primary][0]} and {name} are one (tied) tensor but their "
                    f"sensitivities differ; give it one"
                )
            chosen[primary] = (name, sensitivity)
        return {primary: sensitivity for primary, (_, sensitivity) in chosen.items()}

    def _fakes(self) -> list[FakePalettize]:
        return [t.module.parametrizations[t.state_name][0] for t in self._targets]

    def _enter(self, lifecycle: Lifecycle, what: str) -> None:
        if not is_prepared(self.model) or not self._targets:
            raise RuntimeError(f"{what} needs a prepared model: call prepare first")
        if self._lifecycle is not Lifecycle.IDLE:
            raise RuntimeError(f"Cannot enter {what} while palettizer is {self._lifecycle.value}")
        self._lifecycle = lifecycle

    @contextmanager
    def calibration_mode(
        self,
        model: nn.Module | None = None,
        *,
        loss_fn: Callable[..., torch.Tensor],
        sensitivity_path: str | Path | None = None,
    ) -> Iterator[SensitivityCollector]:
        """Collect squared gradients of the loss as weight sensitivities (SqueezeLLM), then
        re-cluster every palettized weight with them as k-means sample weights on exit.

            with palettizer.calibration_mode(loss_fn=F.cross_entropy) as calibration:
                for inputs, labels in batches:
                    calibration.step(model(inputs), labels)

        Gradients reach the dense weights straight through the palettization in any mode
        (eval keeps BatchNorm statistics still); parameter `.grad`s are cleared after each
        step. The sensitivities are saved to `sensitivity_path` when given (safetensors for
        a ".safetensors" path, coreai_opt's torch.save format otherwise).
        """
        model = self.model if model is None else model
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not is_prepared(model):
            raise RuntimeError("calibration needs a prepared model: call prepare first")
        self._enter(Lifecycle.CALIBRATING, "calibration_mode()")
        fakes = self._fakes()
        collector = SensitivityCollector(model, self._targets, loss_fn)
        for fake in fakes:
            fake.straight_through = True
        try:
            yield collector
        finally:
            for fake in fakes:
                fake.straight_through = False
            self._lifecycle = Lifecycle.IDLE
        if collector.steps == 0:
            raise RuntimeError("calibration_mode ended without any step(output, target) call")
        if sensitivity_path is not None:
            write_sensitivities(collector.sensitivities, sensitivity_path)
        self._sensitivities = collector.sensitivities
        if _distributed():  # every rank clusters with the sum of all ranks' sensitivities
            from coreai_opt_gpu.distributed import all_reduce_sensitivities

            self._sensitivities = all_reduce_sensitivities(collector.sensitivities)
        results = _cluster(self._targets, self._sensitivities, progress=True)
        for group, fake in zip(self._groups, fakes, strict=True):
            fake.update(padding_rows_zero(group, results[group.primary.qualified_name]))

    @contextmanager
    def training_mode(self) -> Iterator[KMeansPalettizer]:
        """Context manager around a training loop (not inside `calibration_mode()`).

        The model is in train mode inside (its modes are restored on exit). Each palettized
        weight behaves as its spec's `training_strategy_spec` says: by default it stays at
        its k-means value and the rest of the network trains around it; with
        `CentroidTrainingSpec` its LUT learns. A module's `pat_schedule` keeps its
        palettization off (the dense weight trains) until `step()` has been called
        `enable_fake_palettize` times, then re-clusters it from the trained weight.
        """
        self._enter(Lifecycle.TRAINING, "training_mode()")
        modes = {module: module.training for module in self.model.modules()}
        self.model.train()
        try:
            self._apply_schedule()
            yield self
        finally:
            for target, fake in zip(self._targets, self._fakes(), strict=True):
                if fake.fake_palett_enabled:
                    fake.training_strategy.on_exit(fake, target.tensor)
            for module, training in modes.items():
                module.train(training)
            self._lifecycle = Lifecycle.IDLE

    def step(self) -> None:
        """Advance the training schedule by one step; only inside `training_mode()`."""
        if self._lifecycle is not Lifecycle.TRAINING:
            raise RuntimeError("step() must be called inside a training_mode() context.")
        self._step_count += 1
        self._apply_schedule()
        for target, fake in zip(self._targets, self._fakes(), strict=True):
            if fake.fake_palett_enabled:
                fake.training_strategy.on_step(fake, target.tensor, self._step_count)

    def _apply_schedule(self) -> None:
        """Turn each scheduled weight's palettization on or off for the current step; the
        ones turning on are re-clustered from their current dense weights."""
        turning_on = []
        for group, fake in zip(self._groups, self._fakes(), strict=True):
            schedule = group.primary.pat_schedule
            if schedule is None:
                continue
            enabled = schedule._compute_state(self._step_count)
            if enabled and not fake.fake_palett_enabled:
                turning_on.append((group, fake))
            fake.enable_fake_palett(enabled)
        if turning_on:
            targets = [group.primary for group, _ in turning_on]
            results = _cluster(targets, self._sensitivities)
            for group, fake in turning_on:
                fake.update(padding_rows_zero(group, results[group.primary.qualified_name]))

    def save_sensitivities(self, path: str | Path) -> None:
        """Write the sensitivities in use (from `calibration_mode()` or `prepare`): ours for a
        ".safetensors" path, coreai_opt's torch.save format otherwise."""
        if not is_prepared(self.model):
            raise RuntimeError(
                "Model must be prepared before saving sensitivities. Call prepare() first."
            )
        if not self._sensitivities:
            raise ValueError(
                "No sensitivities found in the model. Run calibration_mode() first to compute "
                "sensitivity values, or load precomputed sensitivities via "
                "prepare(sensitivity_path=...)."
            )
        write_sensitivities(self._sensitivities, path)

    def finalize(
        self,
        model: nn.Module | None = None,
        backend: ExportBackend = ExportBackend.CoreAI,
        *,
        mmap_dir: str | Path | None = None,
    ) -> nn.Module:
        """Convert the fake-palettized weights for `backend` and clear the prepared mark.

        ExportBackend.Torch: indices bit-packed at n_bits, dense weights freed, weights
        decoded by the packed dequant op on access (see `finalize.finalize_torch`).
        ExportBackend.CoreAI: coreai-torch's palettization layers, for its converter (needs
        the optional coreai-torch package; see `finalize_coreai`). The figures are in
        `self.report`. The Core ML backend is not built yet. Trained LUTs are snapped to
        their quantization grid, indices re-assigned, and stored as buffers first.
        """
        model = self.model if model is None else model
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not is_prepared(model):
            raise RuntimeError("the model is not prepared for palettization: call prepare first")
        backend = ExportBackend(backend)
        if backend == ExportBackend.CoreML:
            raise ValueError(
                "backend=CoreML is not available yet; available: ExportBackend.Torch, "
                "ExportBackend.CoreAI"
            )
        if mmap_dir is not None:
            raise ValueError("mmap_dir is not supported yet: pass None")
        if model is self.model:
            for target, fake in zip(self._targets, self._fakes(), strict=True):
                if fake.lut_is_trainable:
                    fake.reassign_indices(target.tensor)
                    fake.freeze_lut()
        finalize = finalize_coreai if backend == ExportBackend.CoreAI else finalize_torch
        self.report = finalize(model)
        logger.info(
            "finalized %d weights: %.2f bits per weight, %.1f MiB saved",
            self.report.weights,
            self.report.bits_per_weight,
            self.report.saved_bytes / 2**20,
        )
        delattr(model, PREPARED_MARK)
        return model


class SensitivityCollector:
    """Accumulates squared gradients of the dense weights, one `step` per batch."""

    def __init__(
        self, model: nn.Module, targets: list[WeightTarget], loss_fn: Callable[..., torch.Tensor]
    ) -> None:
        self.model = model
        self.targets = targets
        self.loss_fn = loss_fn
        self.steps = 0
        self.sensitivities: dict[str, torch.Tensor] = {
            t.qualified_name: torch.zeros_like(t.tensor, dtype=torch.float32) for t in targets
        }

    def step(self, output: torch.Tensor, target: torch.Tensor) -> float:
        """loss_fn(output, target), backward, accumulate grad^2; returns the loss."""
        loss = self.loss_fn(output, target)
        loss.backward()
        for t in self.targets:
            grad = t.tensor.grad
            if grad is not None:
                self.sensitivities[t.qualified_name] += grad.detach().float() ** 2
        for parameter in self.model.parameters():
            parameter.grad = None
        self.steps += 1
        return float(loss.detach())


def save_sensitivities(sensitivities: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write {"<module>.<weight>": sensitivity} for `prepare(sensitivity_path=...)`."""
    write_sensitivities(sensitivities, path)


def keep_padding_row_zero(target: WeightTarget, palettized: PalettizedWeight) -> PalettizedWeight:
    """An nn.Embedding's `padding_idx` row (zero, and never trained) must decode to exactly
    zero: in each block it touches, the centroid nearest zero becomes 0 and the row's
    elements take it. Needs scalar centroids; with cluster_dim > 1 the row shares vectors
    with its neighbours, so it is left as clustered, with a warning."""
    module = target.module
    pad = getattr(module, "padding_idx", None)
    if not isinstance(module, nn.Embedding) or target.state_name != "weight" or pad is None:
        return palettized
    if not bool((target.tensor[pad] == 0).all()):
        return palettized
    layout = palettized.layout
    if layout.cluster_dim > 1:
        warnings.warn(
            f"{target.qualified_name}: padding_idx row {pad} is palettized in vectors of "
            f"cluster_dim={layout.cluster_dim} rows and may not decode to exactly zero",
            stacklevel=3,
        )
        return palettized
    lut = palettized.lut.clone()  # [G, K, 1]
    indices = palettized.indices.clone()  # [O, C, T]
    block_row = pad // (layout.vectors // layout.blocks_axis0)
    columns_per_block = layout.channels // layout.blocks_axis1
    blocks = block_row * layout.blocks_axis1 + torch.arange(layout.blocks_axis1, device=lut.device)
    codes = lut[blocks, :, 0].abs().argmin(1)  # [B1]: each block's centroid nearest zero
    lut[blocks, codes, 0] = 0.0
    row = codes.repeat_interleave(columns_per_block).to(indices.device, indices.dtype)  # [C]
    indices[pad] = row[:, None].expand_as(indices[pad])  # no readback per block
    return dataclasses.replace(palettized, lut=lut, indices=indices)


def padding_rows_zero(group: SharedWeight, palettized: PalettizedWeight) -> PalettizedWeight:
    """`keep_padding_row_zero` for every name of one (possibly tied) tensor: an nn.Embedding
    among its owners keeps its padding row zero for all of them."""
    for target in group.targets:
        palettized = keep_padding_row_zero(target, palettized)
    return palettized


def _check_weights_have_data(groups: list[SharedWeight]) -> None:
    """Weights on the meta device have no values to cluster: a ValueError naming them."""
    meta = [g.primary for g in groups if g.primary.tensor.is_meta]
    if meta:
        names = [f"{t.qualified_name} {list(t.tensor.shape)}" for t in meta[:5]]
        more = f" and {len(meta) - 5} more" if len(meta) > 5 else ""
        raise ValueError(
            f"weights on the meta device have no values to palettize: {', '.join(names)}{more}; "
            f"load the weights first (e.g. model.to_empty(device='cpu') then load_state_dict, "
            f"or from_pretrained without a meta device map), then prepare"
        )


def is_prepared(model: nn.Module) -> bool:
    return hasattr(model, PREPARED_MARK)


DISTRIBUTED_ENV = "COREAI_OPT_GPU_DISTRIBUTED"


def _distributed() -> bool:
    """Inside an initialized process group of several ranks, unless
    `COREAI_OPT_GPU_DISTRIBUTED=0` (each rank then clusters its own model alone, as
    coreai_opt does; e.g. FSDP or pipeline stages that hold different weights)."""
    import os

    import torch.distributed as dist

    value = os.environ.get(DISTRIBUTED_ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{DISTRIBUTED_ENV}={value!r} is not valid; allowed: 0, 1 (or unset)")
    if value == "0":
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _cluster(targets, sensitivities=None, progress=False, **kwargs):
    """`palettize_targets`; inside an initialized process group of several ranks, the weights
    are shared out across the ranks and the results gathered once
    (`distributed.palettize_targets_distributed`), so every rank gets the same model."""
    if _distributed():
        from coreai_opt_gpu.distributed import palettize_targets_distributed

        return palettize_targets_distributed(targets, sensitivities, progress, **kwargs)
    return palettize_targets(targets, sensitivities, progress, **kwargs)
