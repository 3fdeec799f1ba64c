"""A model skeleton on the meta device, so weights resolve against a config like in `prepare`.

`hf`: the Hugging Face architecture of `config.json` (`AutoModelForCausalLM.from_config`, or
`AutoModel` for other models) built under `torch.device("meta")`: module names and types are
the real ones and no memory is allocated. `generic`: for bare shards, a module per stored
tensor `<module>.weight`: 2-D -> torch.nn.Linear, 3/4/5-D -> torch.nn.Conv1d/2d/3d (so an
embedding table resolves as a Linear; pass `config.json` for real types).

`bind_targets` runs the palettizer's own `find_targets` on the skeleton and pairs each weight
with the stored tensor of the same name; `runtime_target` swaps the meta tensor for the real
one (loaded shard by shard) without touching the skeleton.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from coreai_opt_gpu.checkpoint.shards import (
    HF_CONFIG_NAME,
    CheckpointError,
    CheckpointSource,
    TensorInfo,
)
from coreai_opt_gpu.config.resolver import unmatched_module_keys
from coreai_opt_gpu.config.trace import static_ops
from coreai_opt_gpu.palettization.config import KMeansPalettizerConfig
from coreai_opt_gpu.palettization.targets import WeightTarget, find_targets
from coreai_opt_gpu.palettization.tied import check_owners_agree, shared_weights

SKELETONS = ("auto", "hf", "generic")
_CONV = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}


def hf_skeleton(config_path: Path) -> nn.Module:
    """The model of a Hugging Face `config.json` (file or its directory) on the meta device."""
    config_path = config_path / HF_CONFIG_NAME if config_path.is_dir() else config_path
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: model config not found")
    try:
        import transformers
    except ImportError:
        raise CheckpointError(
            f"{config_path}: building the model skeleton needs transformers "
            "(pip install transformers), or use --skeleton generic"
        ) from None
    try:
        config = transformers.AutoConfig.from_pretrained(str(config_path.parent))
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return transformers.AutoModelForCausalLM.from_config(config)
            except ValueError:  # not a causal LM: the base model class
                return transformers.AutoModel.from_config(config)
    except (ValueError, KeyError, OSError) as err:
        raise CheckpointError(
            f"{config_path}: transformers cannot build this model ({err}); use --skeleton generic"
        ) from None


def generic_skeleton(source: CheckpointSource) -> nn.Module:
    """Modules from tensor names alone (see module docstring), on the meta device."""
    root = nn.Module()
    tensors = source.tensor_map()
    for name, info in tensors.items():
        module_name, _, state = name.rpartition(".")
        ndim = len(info.shape)
        if state != "weight" or not module_name or not info.is_floating or not 2 <= ndim <= 5:
            continue
        bias = tensors.get(f"{module_name}.bias")
        has_bias = bias is not None and bias.shape == info.shape[:1]
        with torch.device("meta"):
            if ndim == 2:
                module = nn.Linear(info.shape[1], info.shape[0], bias=has_bias)
            else:
                module = _CONV[ndim](info.shape[1], info.shape[0], info.shape[2:], bias=has_bias)
        parent = root
        *path, leaf = module_name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, module)
    return root


def build_skeleton(
    kind: str, source: CheckpointSource, model_config: Path | None = None
) -> tuple[nn.Module, str]:
    """(skeleton, description): `kind` auto uses config.json (given, or beside the shards)
    when there is one, else the generic skeleton."""
    if kind not in SKELETONS:
        raise CheckpointError(f"skeleton {kind!r} is not one of {list(SKELETONS)}")
    config_path = model_config
    if config_path is None and source.directory is not None:
        candidate = source.directory / HF_CONFIG_NAME
        config_path = candidate if candidate.is_file() else None
    if kind == "hf" and config_path is None:
        raise CheckpointError(
            "--skeleton hf needs a config.json beside the shards or --model-config PATH"
        )
    if kind == "generic" or config_path is None:
        return generic_skeleton(source), "generic"
    model = hf_skeleton(config_path)
    return model, f"hf:{type(model).__name__}"


@dataclass(frozen=True)
class BoundTarget:
    """A weight the config palettizes (resolved on the skeleton) and where it is stored."""

    target: WeightTarget
    info: TensorInfo

    @property
    def name(self) -> str:
        return self.target.qualified_name


@dataclass(frozen=True)
class Binding:
    """Weights to palettize in storage order, tied weights stored under another name (name ->
    stored name; the job clusters a tied tensor once and writes it under every name, like
    `prepare` + `finalize` do) and config entries that match no module of the skeleton."""

    targets: tuple[BoundTarget, ...]
    tied: dict[str, str]
    unmatched_config: tuple[str, ...]


def bind_targets(
    skeleton: nn.Module,
    config: KMeansPalettizerConfig,
    source: CheckpointSource,
    skeleton_kind: str,
) -> Binding:
    """Resolve the config on the skeleton and pair each weight with its stored tensor."""
    unmatched = tuple(str(k) for k in unmatched_module_keys(config, skeleton))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = static_ops(skeleton)
        found = find_targets(skeleton, config, trace)
    try:  # a tied tensor's owners must give it one spec, as prepare requires
        check_owners_agree(shared_weights(found), skeleton, config, trace)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    for warning in caught:  # incompatible weights stay dense: say so, naming them
        warnings.warn(str(warning.message), stacklevel=2)
    stored = source.tensor_map()
    names_of: dict[int, list[str]] = {}  # a tensor's names in the skeleton (ties: several)
    for name, tensor in (
        *skeleton.named_parameters(remove_duplicate=False),
        *skeleton.named_buffers(remove_duplicate=False),
    ):
        names_of.setdefault(id(tensor), []).append(name)
    bound, tied, missing = [], {}, []
    for target in found:
        name = target.qualified_name
        if name in stored:
            info = stored[name]
        else:  # a tied weight is stored once, under one of its names
            aliases = [n for n in names_of.get(id(target.tensor), []) if n in stored]
            if not aliases:
                missing.append(name)
                continue
            info = stored[aliases[0]]
            tied[name] = aliases[0]
        expected = tuple(target.tensor.shape)
        if info.shape != expected:
            raise CheckpointError(
                f"{info.shard}: tensor {info.name!r} has shape {list(info.shape)} but the "
                f"{skeleton_kind} model expects {list(expected)} for {name}"
            )
        if not info.is_floating:
            raise CheckpointError(
                f"{info.shard}: tensor {info.name!r} is stored as {info.dtype}; "
                "palettization needs a floating-point weight"
            )
        bound.append(BoundTarget(target, info))
    if missing:
        raise CheckpointError(
            f"the {skeleton_kind} model has weights the config palettizes that no shard holds: "
            f"{sorted(missing)[:5]} ({len(missing)} in all); the checkpoint's names differ "
            "from the model's (try --skeleton generic, or --model-config)"
        )
    if not bound:
        types = sorted({type(m).__name__ for m in skeleton.modules()} - {"Module"})
        raise CheckpointError(
            f"the config palettizes no tensor of the checkpoint ({len(stored)} tensors, e.g. "
            f"{list(stored)[:3]}; {skeleton_kind} model module types: {types[:8]})"
        )
    order = {name: i for i, name in enumerate(stored)}
    bound.sort(key=lambda b: order[b.info.name])  # stable: a tie's names in module order
    return Binding(tuple(bound), tied, unmatched)


def runtime_target(bound: BoundTarget, tensor: torch.Tensor) -> WeightTarget:
    """The bound weight's target with `tensor` (loaded from its shard) as its weight, on a
    detached shallow copy of its skeleton module (same class and attributes, e.g. an
    embedding's padding_idx; no children), so the skeleton is never modified."""
    t = bound.target
    module = copy.copy(t.module)
    module._parameters = dict(module._parameters)
    module._buffers = dict(module._buffers)
    module._modules = {}
    if t.state_name in module._parameters:
        module._parameters[t.state_name] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[t.state_name] = tensor
    return dataclasses.replace(t, module=module)


def state_prefix(target: WeightTarget) -> str:
    """`<module>.parametrizations.<state>`: where a palettized weight's finalized entries
    live in the state_dict."""
    return ".".join(p for p in (target.module_name, "parametrizations", target.state_name) if p)
