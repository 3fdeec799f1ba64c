"""`KMeansPalettizer`: palettize a model's weights in place with fake-palettization."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu.export import ExportBackend
from coreai_opt_gpu.palettization.config import KMeansPalettizerConfig
from coreai_opt_gpu.palettization.finalize import CompressionReport, finalize_torch
from coreai_opt_gpu.palettization.palettize import palettize_targets
from coreai_opt_gpu.palettization.parametrization import FakePalettize
from coreai_opt_gpu.palettization.targets import find_targets

PREPARED_MARK = "_coreai_opt_gpu_prepared"
logger = logging.getLogger(__name__)


class KMeansPalettizer:
    """Finds the weights a config palettizes, clusters all of them in a few batched engine
    calls and installs a `FakePalettize` parametrization on each.

    Weights are found on the model's modules (nn.Linear, nn.Conv1d/2d/3d,
    nn.ConvTranspose1d/2d/3d, nn.Embedding, nn.MultiheadAttention's in_proj_weight); weights
    only reached through functional calls (F.linear on a free tensor) are not found yet.
    """

    def __init__(self, model: nn.Module, config: KMeansPalettizerConfig | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.config = config if config is not None else KMeansPalettizerConfig()
        self.report: CompressionReport | None = None

    def prepare(
        self,
        example_inputs: tuple = (),
        sensitivity_path: str | Path | None = None,
        num_workers: int = 1,
    ) -> nn.Module:
        """Palettize the model in place and return it.

        example_inputs: accepted for coreai_opt compatibility; weights are found on modules,
        so no forward pass runs (the model's statistics do not move).
        sensitivity_path: a safetensors file of {"<module>.<weight>": importance}, tensors
        shaped like the weights, used as k-means sample weights.
        num_workers: accepted for compatibility (>= 1); all blocks are clustered together.
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
        targets = find_targets(self.model, self.config)
        if sensitivities:
            known = {t.qualified_name for t in targets}
            unknown = sorted(set(sensitivities) - known)
            if unknown:
                raise ValueError(
                    f"sensitivities given for weights that are not palettized: "
                    f"{unknown[:5]}; palettized weights: {sorted(known)[:5]}"
                )
        results = palettize_targets(targets, sensitivities, progress=True)
        for target in targets:
            parametrize.register_parametrization(
                target.module,
                target.state_name,
                FakePalettize(results[target.qualified_name]),
                unsafe=True,
            )
        self.model.register_buffer(PREPARED_MARK, torch.tensor(True), persistent=False)
        return self.model

    def finalize(
        self,
        model: nn.Module | None = None,
        backend: ExportBackend = ExportBackend.CoreAI,
        *,
        mmap_dir: str | Path | None = None,
    ) -> nn.Module:
        """Convert the fake-palettized weights for `backend` and clear the prepared mark.

        ExportBackend.Torch: indices bit-packed at n_bits, dense weights freed, weights
        decoded by the packed dequant op on access (see `finalize.finalize_torch`); the
        figures are in `self.report`. The Core AI and Core ML backends are not built yet.
        """
        model = self.model if model is None else model
        if not is_prepared(model):
            raise RuntimeError("the model is not prepared for palettization: call prepare first")
        backend = ExportBackend(backend)
        if backend != ExportBackend.Torch:
            raise ValueError(
                f"backend={backend.name} is not available yet; available: ExportBackend.Torch"
            )
        if mmap_dir is not None:
            raise ValueError("mmap_dir is not supported yet: pass None")
        self.report = finalize_torch(model)
        logger.info(
            "finalized %d weights: %.2f bits per weight, %.1f MiB saved",
            self.report.weights,
            self.report.bits_per_weight,
            self.report.saved_bytes / 2**20,
        )
        delattr(model, PREPARED_MARK)
        return model


def is_prepared(model: nn.Module) -> bool:
    return hasattr(model, PREPARED_MARK)
