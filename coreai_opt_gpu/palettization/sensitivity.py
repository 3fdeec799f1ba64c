"""Sensitivity files: importance of every weight element, used as k-means sample weights.

Two formats load: ours (safetensors, keys "<module>.<weight>") and coreai_opt's (`torch.save`
of a dict keyed "<module>.parametrizations.<weight>.original" for palettized weights and
"<module>.<name>" for other parameters). `save_sensitivities` writes ours for a ".safetensors"
path and coreai_opt's format otherwise, so either package can read what the other wrote.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PARAMETRIZED = ".parametrizations."
ORIGINAL = ".original"


def weight_key(key: str) -> str:
    """'enc.0.parametrizations.weight.original' -> 'enc.0.weight'; other keys unchanged."""
    head, sep, tail = f".{key}".rpartition(PARAMETRIZED)
    if sep and tail.endswith(ORIGINAL) and "." not in tail.removesuffix(ORIGINAL):
        return f"{head}.{tail.removesuffix(ORIGINAL)}".lstrip(".")
    return key


def reference_key(key: str) -> str:
    """'enc.0.weight' -> 'enc.0.parametrizations.weight.original' (coreai_opt's key)."""
    module, _, state = key.rpartition(".")
    return (
        f"{module}.parametrizations.{state}.original"
        if module
        else f"parametrizations.{state}.original"
    )


def is_safetensors(path: str | Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header size, then '{'."""
    with open(path, "rb") as stream:
        head = stream.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not zipfile.is_zipfile(path)


def load_sensitivities(path: str | Path) -> dict[str, torch.Tensor]:
    """{"<module>.<weight>": sensitivity} from a file in either format."""
    if is_safetensors(path):
        raw = load_file(str(path))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise ValueError(
                f"{path}: a torch.save sensitivity file must hold a dict of tensors, got "
                f"{type(raw).__name__}"
            )
    return {weight_key(key): value for key, value in raw.items()}


def save_sensitivities(sensitivities: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write {"<module>.<weight>": sensitivity}: safetensors for a ".safetensors" path (ours),
    coreai_opt's `torch.save` format (its keys) for any other path."""
    tensors = {name: s.detach().contiguous().cpu() for name, s in sensitivities.items()}
    if str(path).endswith(".safetensors"):
        save_file(tensors, str(path))
    else:
        torch.save({reference_key(name): s for name, s in tensors.items()}, path)
