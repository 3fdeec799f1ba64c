"""The output directory of a checkpoint run: what it holds, which shards are done, resume.

Layout: the finalized shards under the input shards' names, `model.safetensors.index.json`,
the resolved config (`palettization.yaml`), the report (`palettization_report.json`), the
input directory's small files (config.json, tokenizer, ...), and `.coreai_opt_gpu/`:
`run.json` (what the run is: input shards by name, size and header hash, config, seed,
sensitivities) and one `shards/<shard>.json` record per finished shard, written after the
shard's rename. A shard is done only when its record exists and its file under the final
name matches the record's size and header hash; everything is written under a temporary
name and renamed, so nothing half-written is ever taken as done. A directory holding a
different run, or files of something else, is refused and left untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coreai_opt_gpu.checkpoint.safetensors_io import TEMP_MARK, read_header, write_text_atomic
from coreai_opt_gpu.checkpoint.shards import CheckpointError

STATE_DIR = ".coreai_opt_gpu"
RUN_FILE = "run.json"
CONFIG_NAME = "palettization.yaml"
REPORT_NAME = "palettization_report.json"
FORMAT_VERSION = 1


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


@dataclass(frozen=True)
class RunDirectory:
    """An output directory claimed for one run (see module docstring)."""

    path: Path

    @property
    def state(self) -> Path:
        return self.path / STATE_DIR

    def record_path(self, shard: str) -> Path:
        return self.state / "shards" / f"{shard}.json"

    @classmethod
    def claim(cls, path: Path, fingerprint: dict[str, Any], inputs: list[Path]) -> RunDirectory:
        """Create or reopen `path` for the run `fingerprint`; CheckpointError (nothing
        touched) when it holds a different run or other files, or is an input's directory."""
        for source in inputs:
            folder = source if source.is_dir() else source.parent
            if path.exists() and path.resolve() == folder.resolve():
                raise CheckpointError(
                    f"{path}: the output directory is the input's directory; choose another"
                )
        run_file = path / STATE_DIR / RUN_FILE
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"{path}: exists and is not a directory")
        if run_file.is_file():
            try:
                previous = json.loads(run_file.read_text())
            except (OSError, ValueError) as err:
                raise CheckpointError(f"{run_file}: unreadable run record: {err}") from None
            differing = [
                key
                for key in sorted(set(previous) | set(fingerprint))
                if previous.get(key) != fingerprint.get(key)
            ]
            if differing:
                raise CheckpointError(
                    f"{path}: holds a different run (differs in: {differing}); use another "
                    "output directory, or delete this one yourself to start over"
                )
        elif path.exists() and _foreign_entries(path):
            found = _foreign_entries(path)
            raise CheckpointError(
                f"{path}: not empty and holds no coreai-opt-gpu run (found {found[:3]}); "
                "choose an empty or new directory"
            )
        directory = cls(path)
        (directory.state / "shards").mkdir(parents=True, exist_ok=True)
        if not run_file.is_file():
            write_json_atomic(run_file, fingerprint)
        directory.remove_temporaries()
        return directory

    def remove_temporaries(self) -> None:
        """Delete this tool's temporary files left by an interrupted run (never taken as
        done, never anything else)."""
        for folder in (self.path, self.state, self.state / "shards"):
            for leftover in folder.glob(f"*{TEMP_MARK}*"):
                if leftover.is_file():
                    leftover.unlink()

    def finished(self, shard: str) -> dict[str, Any] | None:
        """The record of `shard` if it is done (its file matches the record), else None."""
        record_path = self.record_path(shard)
        output = self.path / shard
        if not record_path.is_file() or not output.is_file():
            return None
        try:
            record = json.loads(record_path.read_text())
            header = read_header(output)
        except (OSError, ValueError):
            return None
        if header.sha256 != record.get("header_sha256") or header.file_size != record.get(
            "file_size"
        ):
            return None
        return record

    def finish_shard(self, shard: str, record: dict[str, Any]) -> None:
        """Mark `shard` done (after its file was renamed into place)."""
        write_json_atomic(self.record_path(shard), record)


def _foreign_entries(path: Path) -> list[str]:
    """Names in `path` other than a state directory that never got as far as run.json
    (a run killed while claiming the directory)."""
    found = sorted(p.name for p in path.iterdir())
    state = path / STATE_DIR
    if STATE_DIR in found and not any(p.is_file() for p in state.rglob("*.json")):
        found.remove(STATE_DIR)
    return found


def fingerprint(
    shards: list[tuple[str, int, str]],
    config: dict[str, Any],
    seed: int,
    sensitivities: tuple[str, int, str] | None,
) -> dict[str, Any]:
    """What identifies a run: format, input shards (name, size, header sha256), the config
    dict, the seed and the sensitivities file (name, size, header sha256)."""
    return {
        "format": FORMAT_VERSION,
        "input_shards": [list(s) for s in shards],
        "config": config,
        "seed": seed,
        "sensitivities": None if sensitivities is None else list(sensitivities),
    }
