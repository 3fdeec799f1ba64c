"""Test setup: Triton runs under its interpreter when no CUDA device is visible.

TRITON_INTERPRET must be set before any kernel module is imported, so it is decided here,
first thing. GPU-only tests carry the `gpu` marker and skip with a reason on CPU.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402 - after the environment is decided


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def device() -> str:
    """Where kernel tests put tensors: CUDA when present, else CPU under the interpreter."""
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def no_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """The compiled host path as on a machine whose C compiler fails: nothing loaded yet, an
    empty build cache (`tmp_path`), CC a command that always fails."""
    from coreai_opt_gpu.reference import native

    monkeypatch.setattr(native, "_libraries", {})
    monkeypatch.setattr(native, "_reasons", {})
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("CC", "false")
    return tmp_path
