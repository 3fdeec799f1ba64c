"""Which implementation runs an op: Triton for CUDA tensors, numpy for everything else.

`COREAI_OPT_GPU_BACKEND` forces one: `numpy` (even for CUDA tensors: they round-trip through
the host), `triton` (CPU tensors then need TRITON_INTERPRET=1), or `auto` (default).
"""

from __future__ import annotations

import importlib.util
import os
from enum import Enum

import torch

BACKEND_ENV = "COREAI_OPT_GPU_BACKEND"


class Backend(str, Enum):
    TRITON = "triton"
    NUMPY = "numpy"


def requested_backend() -> str:
    """'auto', 'triton' or 'numpy' from the environment (read at every call)."""
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "triton", "numpy"):
        raise ValueError(f"{BACKEND_ENV}={value!r} is not valid; allowed: auto, triton, numpy")
    return value


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def choose_backend(*tensors: torch.Tensor) -> Backend:
    """Backend for an op on `tensors` (see module docstring); explains what cannot run."""
    requested = requested_backend()
    if requested == "numpy":
        return Backend.NUMPY
    on_cuda = all(t.is_cuda for t in tensors)
    if requested == "auto":
        return Backend.TRITON if on_cuda else Backend.NUMPY
    if importlib.util.find_spec("triton") is None:
        raise RuntimeError(f"{BACKEND_ENV}=triton but triton is not installed")
    if not on_cuda and not triton_interpreting():
        raise RuntimeError(
            f"{BACKEND_ENV}=triton with CPU tensors needs TRITON_INTERPRET=1 set before the "
            f"kernels are imported (or move the tensors to a CUDA device)"
        )
    return Backend.TRITON
