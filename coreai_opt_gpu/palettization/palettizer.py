"""`KMeansPalettizer`: palettize a model's weights in place with fake-palettization."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu.config.resolver import unmatched_module_keys
from coreai_opt_gpu.export import ExportBackend
from coreai_opt_gpu.palettization.config import KMeansPalettizerConfig
from coreai_opt_gpu.palettization.finalize import CompressionReport, finalize_torch
from coreai_opt_gpu.palettization.finalize_coreai import finalize_coreai
from coreai_opt_gpu.palettization.functional import functional_sites
from coreai_opt_gpu.palettization.palettize import DEFAULT_MEMORY_BUDGET, palettize_targets
from coreai_opt_gpu.palettization.parametrization import FakePalettize
from coreai_opt_gpu.palettization.targets import WeightTarget, find_targets

PREPARED_MARK = "_coreai_opt_gpu_prepared"
logger = logging.getLogger(__name__)


class KMeansPalettizer:
    """Finds the weights a config palettizes, clusters all of them in a few batched engine
    calls and installs a `FakePalettize` parametrization on each.

    Weights are found on the model's modules (nn.Linear, nn.Conv1d/2d/3d,
    nn.ConvTranspose1d/2d/3d, nn.Embedding, nn.MultiheadAttention's in_proj_weight) and, with
    example inputs, among parameters passed to functional ops (F.linear, F.conv*d,
    F.conv_transpose*d, F.embedding).
    """

    def __init__(self, model: nn.Module, config: KMeansPalettizerConfig | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.config = config if config is not None else KMeansPalettizerConfig()
        self.report: CompressionReport | None = None
        self._targets: list[WeightTarget] = []

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
        restored: no statistics move) finds parameters used through functional calls
        (`F.linear(x, self.w)`); their state names resolve like any other (so a default
        config, keyed "weight"/"in_proj_weight", takes such a parameter only when it is named
        "weight", or with "*"). Without example inputs only module weights are found.
        sensitivity_path: a safetensors file of {"<module>.<weight>": importance}, tensors
        shaped like the weights, used as k-means sample weights.
        num_workers: accepted for compatibility (>= 1); all blocks are clustered together.
        device: where clustering runs (default: CUDA for a CPU-resident model when a GPU is
        present, else the model's device); memory_budget: bytes of fp32 weight blocks sent
        to it at once (the engine's own working memory comes on top; to be measured on a GPU).
        """
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
        if is_prepared(self.model):
            raise RuntimeError(
                "the model is already prepared for palettization; prepare it "
                "once, or finalize it first"
            )
        sensitivities = None
        if sensitivity_path is not None:
            sensitivities = load_file(str(sensitivity_path))
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        functional = functional_sites(self.model, example_inputs) if example_inputs else []
        unmatched = unmatched_module_keys(self.config, self.model)
        if unmatched:
            warnings.warn(
                f"config entries that match no module of the model: {unmatched}", stacklevel=2
            )
        targets = find_targets(self.model, self.config, functional)
        if sensitivities:
            known = {t.qualified_name for t in targets}
            unknown = sorted(set(sensitivities) - known)
            if unknown:
                raise ValueError(
                    f"sensitivities given for weights that are not palettized: "
                    f"{unknown[:5]}; palettized weights: {sorted(known)[:5]}"
                )
        results = palettize_targets(
            targets, sensitivities, progress=True, device=device, memory_budget=memory_budget
        )
        self._targets = targets
        for target in targets:
            parametrize.register_parametrization(
                target.module,
                target.state_name,
                FakePalettize(results[target.qualified_name]),
                unsafe=True,
            )
        self.model.register_buffer(PREPARED_MARK, torch.tensor(True), persistent=False)
        return self.model

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
        step. The sensitivities are saved to `sensitivity_path` (safetensors) when given.
        """
        model = self.model if model is None else model
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not is_prepared(model) or not self._targets:
            raise RuntimeError("calibration needs a prepared model: call prepare first")
        fakes = [t.module.parametrizations[t.state_name][0] for t in self._targets]
        collector = SensitivityCollector(model, self._targets, loss_fn)
        for fake in fakes:
            fake.straight_through = True
        try:
            yield collector
        finally:
            for fake in fakes:
                fake.straight_through = False
        if collector.steps == 0:
            raise RuntimeError("calibration_mode ended without any step(output, target) call")
        if sensitivity_path is not None:
            save_sensitivities(collector.sensitivities, sensitivity_path)
        results = palettize_targets(self._targets, collector.sensitivities, progress=True)
        for target, fake in zip(self._targets, fakes, strict=True):
            fake.update(results[target.qualified_name])

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
        `self.report`. The Core ML backend is not built yet.
        """
        model = self.model if model is None else model
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
    """Write {"<module>.<weight>": sensitivity} to a safetensors file for `prepare`."""
    save_file({name: s.contiguous().cpu() for name, s in sensitivities.items()}, str(path))


def is_prepared(model: nn.Module) -> bool:
    return hasattr(model, PREPARED_MARK)
