"""safetensors files read by header and written as a stream, each file atomically.

Format: 8 bytes little-endian header length H, H bytes of JSON ({name: {"dtype", "shape",
"data_offsets": [begin, end]}} plus "__metadata__": {str: str}), padded with spaces to a
multiple of 8, then the tensor bytes (offsets relative to the end of the header).
`write_safetensors` takes each tensor as a torch tensor or as a byte range of another file
(copied in pieces), so a pass-through tensor never sits in memory whole; it writes to a
temporary name in the same directory, fsyncs, and renames, so a file under the final name is
always complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

# safetensors dtype codes <-> torch dtypes (those torch has)
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
CODES = {dtype: code for code, dtype in DTYPES.items()}
COPY_PIECE = 64 * 2**20  # bytes copied at a time from a pass-through tensor
TEMP_MARK = ".coreai-tmp-"  # temporary files carry this in their name (never taken as done)


@dataclass(frozen=True)
class FileRange:
    """Bytes [begin, end) of a file: a tensor passed through unchanged."""

    path: Path
    begin: int
    end: int


@dataclass(frozen=True)
class Entry:
    """One tensor of a file to write: name, safetensors dtype code, shape, data."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: torch.Tensor | FileRange

    @property
    def nbytes(self) -> int:
        if isinstance(self.data, FileRange):
            return self.data.end - self.data.begin
        return self.data.numel() * self.data.element_size()


def tensor_entry(name: str, tensor: torch.Tensor) -> Entry:
    """An Entry holding a (CPU, contiguous) copy-free view of `tensor`."""
    if tensor.dtype not in CODES:
        raise ValueError(f"{name}: dtype {tensor.dtype} cannot be stored in safetensors")
    data = tensor.detach().cpu().contiguous()
    return Entry(name, CODES[tensor.dtype], tuple(tensor.shape), data)


def header_bytes(entries: Sequence[Entry], metadata: dict[str, str]) -> bytes:
    """The length prefix and padded JSON header for `entries` stored in order."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for entry in entries:
        if entry.name in header:
            raise ValueError(f"tensor name {entry.name!r} appears twice")
        header[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def temporary_path(path: Path) -> Path:
    """Where `path` is written before its rename (same directory, this process's id)."""
    return path.with_name(f"{path.name}{TEMP_MARK}{os.getpid()}")


def write_safetensors(
    path: Path,
    entries: Sequence[Entry],
    metadata: dict[str, str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write `entries` to `path` atomically (temporary name, fsync, rename); returns the file
    size. `on_progress(written, total)` is called after each tensor (fault-injection hook)."""
    head = header_bytes(entries, metadata or {})
    total = len(head) + sum(e.nbytes for e in entries)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as out:
            out.write(head)
            written = len(head)
            for entry in entries:
                written += _write_entry(out, entry)
                if on_progress is not None:
                    on_progress(written, total)
            out.flush()
            os.fsync(out.fileno())
        if written != total or tmp.stat().st_size != total:
            raise OSError(f"{tmp}: wrote {tmp.stat().st_size} bytes, expected {total}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return total


def _write_entry(out, entry: Entry) -> int:
    if isinstance(entry.data, FileRange):
        source = entry.data
        with open(source.path, "rb") as src:
            src.seek(source.begin)
            left = source.end - source.begin
            while left:
                piece = src.read(min(COPY_PIECE, left))
                if not piece:
                    raise OSError(f"{source.path}: ended {left} bytes early while copying")
                out.write(piece)
                left -= len(piece)
        return source.end - source.begin
    if entry.data.numel() == 0:
        return 0
    out.write(entry.data.reshape(-1).view(torch.uint8).numpy().data)
    return entry.nbytes


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file atomically (temporary name, fsync, rename)."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Header:
    """A safetensors file's header: tensors (name -> dtype, shape, absolute byte range) in
    file order, metadata, the header's sha256 and the file size."""

    tensors: dict[str, tuple[str, tuple[int, ...], int, int]]
    metadata: dict[str, str]
    sha256: str
    file_size: int


def read_header(path: Path) -> Header:
    """Parse a safetensors header (raises ValueError saying what is wrong; the caller names
    the file)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"file of {size} bytes is too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > size - 8:
            raise ValueError(f"header length {length} exceeds the file size {size}")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"header is not valid JSON: {err}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + length
    tensors = {}
    end_of_data = 0
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        begin, end = info["data_offsets"]
        tensors[name] = (info["dtype"], tuple(info["shape"]), base + begin, base + end)
        end_of_data = max(end_of_data, end)
    if base + end_of_data != size:
        raise ValueError(
            f"file is {size} bytes but its header describes {base + end_of_data} "
            "(truncated or padded)"
        )
    return Header(tensors, metadata, hashlib.sha256(raw).hexdigest(), size)
