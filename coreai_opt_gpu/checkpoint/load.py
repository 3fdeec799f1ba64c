"""Load a checkpoint written by `coreai-opt-gpu palettize` into a model: the same finalized
model as `KMeansPalettizer(model, config).prepare()` + `finalize(backend=ExportBackend.Torch)`
on the original checkpoint, without clustering anything."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import parametrize

from coreai_opt_gpu.checkpoint.rundir import CONFIG_NAME
from coreai_opt_gpu.checkpoint.shards import INDEX_NAME, SINGLE_NAME, CheckpointError
from coreai_opt_gpu.checkpoint.skeleton import state_prefix
from coreai_opt_gpu.engine.lut_quant import QuantizedLut
from coreai_opt_gpu.palettization.config import KMeansPalettizerConfig
from coreai_opt_gpu.palettization.finalize import finalize_torch
from coreai_opt_gpu.palettization.palettize import PalettizedWeight
from coreai_opt_gpu.palettization.parametrization import FakePalettize
from coreai_opt_gpu.palettization.targets import find_targets
from coreai_opt_gpu.palettization.tied import shared_weights
from coreai_opt_gpu.reference.packing import unpack_indices


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the output checkpoint in `directory` (its index, or model.safetensors)."""
    index = directory / INDEX_NAME
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / SINGLE_NAME).is_file():
        names = [SINGLE_NAME]
    else:
        raise CheckpointError(f"{directory}: no {INDEX_NAME} or {SINGLE_NAME}")
    state: dict[str, torch.Tensor] = {}
    for name in names:
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: shard named by {index} not found")
        state.update(load_file(str(path)))
    return state


def load_palettized(directory: str | Path, model: nn.Module) -> nn.Module:
    """Install the palettized weights of `directory` on `model` (same architecture as the
    checkpoint, not prepared; its dense weights are dropped) and load every tensor; returns
    it. Tensors the checkpoint does not hold (e.g. non-persistent buffers) are kept, so a
    model on the meta device is refused when it has any.

    Each palettized weight becomes a `PackedPalettize` parametrization (as `finalize_torch`
    makes it; a tied weight's names share one, and one empty original) and every tensor takes
    the stored dtype (load_state_dict with assign=True), so the model's state_dict equals the
    stored one.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: not found; is {directory} a palettized output?")
    config = KMeansPalettizerConfig.from_yaml(config_path)
    state = read_state_dict(directory)
    groups = shared_weights(find_targets(model, config))
    installed = 0
    for group in groups:
        primary = group.primary
        prefix = state_prefix(primary)
        if f"{prefix}.0.packed" not in state:
            raise CheckpointError(
                f"{directory}: no palettized entries for {primary.qualified_name} "
                f"({prefix}.0.packed missing); the model does not match the checkpoint"
            )
        _check_tied_entries(directory, group, state)
        original = state[f"{prefix}.original"]
        fake = FakePalettize(_palettized_weight(primary, state, prefix))
        placeholder = nn.Parameter(
            torch.empty(primary.tensor.shape, dtype=original.dtype, device="meta"),
            requires_grad=False,
        )
        for target in group.targets:  # tied weights: one parametrization, every name
            if parametrize.is_parametrized(target.module, target.state_name):
                raise CheckpointError(f"{target.qualified_name} is already parametrized")
            setattr(target.module, target.state_name, placeholder)
            parametrize.register_parametrization(
                target.module, target.state_name, fake, unsafe=True
            )
        installed += 1
    if not installed:
        raise CheckpointError(f"{directory}: the config palettizes no weight of this model")
    finalize_torch(model)
    model.load_state_dict(state, strict=True, assign=True)
    for group in groups:  # assign gave each name its own empty original: share one again
        first = group.targets[0]
        original = first.module.parametrizations[first.state_name].original
        for target in group.targets[1:]:
            target.module.parametrizations[target.state_name].original = original
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise CheckpointError(
            f"tensors not stored in {directory} are still on the meta device: {still_meta[:5]}; "
            "build the model on a real device (e.g. AutoModelForCausalLM.from_config on CPU)"
        )
    return model


def _check_tied_entries(directory: Path, group, state: dict[str, torch.Tensor]) -> None:
    """A tied tensor's names must hold the same entries (the job writes them so): otherwise
    one name's LUT and indices would silently replace the other's when loading."""
    first = state_prefix(group.primary)
    keys = [k.removeprefix(first) for k in state if k.startswith(f"{first}.")]
    for target in group.targets[1:]:
        other = state_prefix(target)
        for key in keys:
            mine, theirs = state.get(f"{other}{key}"), state[f"{first}{key}"]
            if mine is None or mine.shape != theirs.shape or not torch.equal(mine, theirs):
                raise CheckpointError(
                    f"{directory}: {group.primary.qualified_name} and {target.qualified_name} "
                    f"are one (tied) tensor in this model but the checkpoint's {first}{key} and "
                    f"{other}{key} differ; it was not written for this model's ties"
                )


def _palettized_weight(target, state: dict[str, torch.Tensor], prefix: str) -> PalettizedWeight:
    layout, spec = target.layout, target.spec
    packed = state[f"{prefix}.0.packed"]
    v, c, t = layout.index_shape
    codes = unpack_indices(packed.numpy(), spec.n_bits, c * t)
    indices = torch.from_numpy(codes).reshape(v, c, t)
    lut = state[f"{prefix}.0.lut"]
    row_scale = state[f"{prefix}.0.row_scale"]
    lut_scale = state[f"{prefix}.0.lut_scale"]
    quantized = None
    if lut_scale.numel():
        quantized = QuantizedLut(lut, lut_scale, state[f"{prefix}.0.lut_zero_point"])
    return PalettizedWeight(
        spec, layout, lut, indices, row_scale if row_scale.numel() else None, quantized
    )
