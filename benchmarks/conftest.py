"""Benchmarks share the test suite's setup (interpreter on CPU-only machines)."""

from tests.conftest import HAS_CUDA, device  # noqa: F401 - re-exported fixture and flag
