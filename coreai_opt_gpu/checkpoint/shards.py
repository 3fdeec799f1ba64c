"""The input checkpoint: which safetensors shards, and what each holds (headers only).

Input is a Hugging Face model directory (`model.safetensors.index.json` naming the shards,
or `model.safetensors`, or any `*.safetensors`; `config.json` beside them describes the
model), an index file, or safetensors files. Every shard is opened (safetensors validates
it, memory-mapped) and its header parsed; nothing else is read here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from coreai_opt_gpu.checkpoint.safetensors_io import DTYPES, Header, read_header

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
HF_CONFIG_NAME = "config.json"


class CheckpointError(ValueError):
    """Input or output that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor: shard (file name and path), name, safetensors dtype code, shape,
    absolute byte range in the file."""

    shard: str
    path: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def is_floating(self) -> bool:
        torch_dtype = DTYPES.get(self.dtype)
        return torch_dtype is not None and torch_dtype.is_floating_point


@dataclass(frozen=True)
class Shard:
    """A safetensors file of the input: its path, header and tensors in file order."""

    path: Path
    header: Header
    tensors: tuple[TensorInfo, ...]

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class CheckpointSource:
    """The shards of the input (in order), where config.json is, and the index if any."""

    shards: tuple[Shard, ...]
    directory: Path | None  # the model directory (config.json, tokenizer files), if any
    index: Path | None

    def tensor_map(self) -> dict[str, TensorInfo]:
        return {t.name: t for shard in self.shards for t in shard.tensors}

    @property
    def total_bytes(self) -> int:
        return sum(t.end - t.begin for shard in self.shards for t in shard.tensors)


def open_shard(path: Path) -> Shard:
    """Open and validate one shard; CheckpointError naming it when missing or unreadable."""
    if not path.is_file():
        raise CheckpointError(f"{path}: shard not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = set(handle.keys())
        header = read_header(path)
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file: {err}") from None
    if set(header.tensors) != names:
        raise CheckpointError(f"{path}: header lists other tensors than safetensors reads")
    tensors = tuple(
        TensorInfo(path.name, path, name, dtype, shape, begin, end)
        for name, (dtype, shape, begin, end) in header.tensors.items()
    )
    return Shard(path, header, tensors)


def open_checkpoint(inputs: list[Path]) -> CheckpointSource:
    """Resolve the input paths to shards and open them all."""
    if not inputs:
        raise CheckpointError("no input given: pass a model directory or safetensors files")
    directory = index = None
    if len(inputs) == 1 and inputs[0].is_dir():
        directory = inputs[0]
        paths, index = _shards_of_directory(directory)
    elif len(inputs) == 1 and inputs[0].name.endswith(".index.json"):
        index = inputs[0]
        directory = index.parent
        paths = _shards_of_index(index)
    else:
        for path in inputs:
            if path.is_dir():
                raise CheckpointError(f"{path}: a directory among several inputs; pass one")
            if path.suffix != ".safetensors":
                raise CheckpointError(
                    f"{path}: not a .safetensors file (inputs: a model directory, an "
                    f"index .json, or .safetensors files)"
                )
        paths = list(inputs)
        parents = {p.parent.resolve() for p in paths}
        if len(parents) == 1:
            (parent,) = parents
            directory = parent if (parent / HF_CONFIG_NAME).is_file() else None
    if len({p.name for p in paths}) != len(paths):
        raise CheckpointError(f"shard file names repeat among {[str(p) for p in paths]}")
    shards = tuple(open_shard(p) for p in paths)
    seen: dict[str, str] = {}
    for shard in shards:
        for tensor in shard.tensors:
            if tensor.name in seen:
                raise CheckpointError(
                    f"tensor {tensor.name!r} is stored twice: in {seen[tensor.name]} and "
                    f"{shard.path}"
                )
            seen[tensor.name] = str(shard.path)
    if index is not None:
        _check_index(index, shards)
    return CheckpointSource(shards, directory, index)


def _shards_of_directory(directory: Path) -> tuple[list[Path], Path | None]:
    if (directory / INDEX_NAME).is_file():
        return _shards_of_index(directory / INDEX_NAME), directory / INDEX_NAME
    if (directory / SINGLE_NAME).is_file():
        return [directory / SINGLE_NAME], None
    paths = sorted(directory.glob("*.safetensors"))
    if not paths:
        raise CheckpointError(
            f"{directory}: no {INDEX_NAME}, {SINGLE_NAME} or *.safetensors file found"
        )
    return paths, None


def _read_index(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{index}: not a safetensors index with a weight_map: {err}"
        ) from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: weight_map is empty or not a mapping")
    return weight_map


def _shards_of_index(index: Path) -> list[Path]:
    names = sorted(set(_read_index(index).values()))
    return [index.parent / name for name in names]


def _check_index(index: Path, shards: tuple[Shard, ...]) -> None:
    held = {t.name: shard.name for shard in shards for t in shard.tensors}
    for name, shard_name in _read_index(index).items():
        if held.get(name) != shard_name:
            where = f"it is in {held[name]}" if name in held else "no shard holds it"
            raise CheckpointError(f"{index}: maps tensor {name!r} to {shard_name}, but {where}")
