"""A compiled host path for the two twin steps that numpy runs slowly.

- `dp_layer(prev, sums)` computes one layer of the exact 1-D DP exactly as
  `kmeans_1d_exact._next_layer` does (the same float64 operations in the same order,
  `dp_layer.c`): numpy needs about a dozen vectorized steps per layer, each over every
  candidate, which dominates per-tensor 8-bit layers (255 layers) on the CPU.
- `vector_step(x, centroids, weights)` is one vector Lloyd step exactly as
  `kmeans_vector.assign_update` computes it (`vector_step.c`): numpy makes ~7 passes over
  every (vector, centroid) distance, 95% of a vector layer's time.

The C sources are built on first use with the system's C compiler (`$CC`, else `cc`) into one
library in a cache directory keyed by the sources' hash, and loaded with ctypes.

Dispatch: `available()` is False when `COREAI_OPT_GPU_NATIVE=0`, when no compiler is found or
the build fails (the reason is kept in `unavailable_reason()`); callers then run numpy. Results
are the same either way (tests/test_native_dp.py and tests/test_native_vector.py compare them
bit for bit).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

NATIVE_ENV = "COREAI_OPT_GPU_NATIVE"
CACHE_ENV = "COREAI_OPT_GPU_NATIVE_CACHE"
SOURCES = [Path(__file__).with_name(name) for name in ("dp_layer.c", "vector_step.c")]
FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math"]

_library: ctypes.CDLL | None = None
_reason: str | None = None
_loaded = False


def _cache_dir() -> Path:
    """`COREAI_OPT_GPU_NATIVE_CACHE`, else `$XDG_CACHE_HOME/coreai_opt_gpu`, else
    `~/.cache/coreai_opt_gpu`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "coreai_opt_gpu"


def _build() -> ctypes.CDLL:
    """Compile (once per source and flags, atomically) and load the library."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (set CC, or install cc/gcc)")
    source = b"".join(path.read_bytes() for path in SOURCES)
    key = hashlib.sha256(source + " ".join([compiler, *FLAGS, sys.platform]).encode())
    directory = _cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"host-{key.hexdigest()[:16]}.so"
    if not target.is_file():
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            built = Path(scratch) / target.name
            done = subprocess.run(
                [compiler, *FLAGS, *map(str, SOURCES), "-o", str(built), "-lm"],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[:500]}")
            os.replace(built, target)  # atomic: another process may build the same file
    library = ctypes.CDLL(str(target))
    pointer = np.ctypeslib.ndpointer
    library.dp_layer.argtypes = [
        *[pointer(np.float64, flags="C_CONTIGUOUS")] * 4,
        ctypes.c_int64,
        ctypes.c_int64,
        pointer(np.float64, flags="C_CONTIGUOUS"),
        pointer(np.int64, flags="C_CONTIGUOUS"),
    ]
    library.dp_layer.restype = None
    floats = pointer(np.float32, flags="C_CONTIGUOUS")
    doubles = pointer(np.float64, flags="C_CONTIGUOUS")
    library.vector_step.argtypes = [
        floats,
        ctypes.c_void_p,  # weights, or NULL
        floats,
        *[ctypes.c_int64] * 5,
        pointer(np.uint8, flags="C_CONTIGUOUS"),
        floats,
        doubles,
        doubles,
    ]
    library.vector_step.restype = None
    return library


def _load() -> ctypes.CDLL | None:
    global _library, _reason, _loaded
    if not _loaded:
        _loaded = True
        try:
            _library = _build()
        except Exception as err:  # no compiler, a failed build, an unloadable file
            _library, _reason = None, str(err)
    return _library


def _enabled() -> bool:
    """`COREAI_OPT_GPU_NATIVE`: unset or 1 (use it when it builds), 0 (numpy only)."""
    value = os.environ.get(NATIVE_ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{NATIVE_ENV}={value!r} is not valid; allowed: 0, 1 (or unset)")
    return value == "1"


def available() -> bool:
    """Whether the compiled host path runs (not disabled, built and loaded)."""
    return _enabled() and _load() is not None


def unavailable_reason() -> str | None:
    """Why the compiled host path is not available (None when it is, or was never tried)."""
    return f"{NATIVE_ENV}=0" if not _enabled() else _reason


def dp_layer(
    prev: np.ndarray, w: np.ndarray, wx: np.ndarray, wxx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """D[k] [G, B+1] float64 and its leftmost argmins [G, B+1] int64 from D[k-1] [G, B+1]
    and the prefix sums of w, w*x, w*x^2 [G, B+1]. Requires `available()`."""
    library = _load()
    if library is None:
        raise RuntimeError(f"the compiled host path is not available: {_reason}")
    arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in (prev, w, wx, wxx)]
    g_count, width = arrays[0].shape
    cur = np.zeros((g_count, width), np.float64)
    opt = np.zeros((g_count, width), np.int64)
    library.dp_layer(*arrays, g_count, width, cur, opt)
    return cur, opt


def vector_step(
    x: np.ndarray, centroids: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`kmeans_vector.assign_update` in C: x [G, N, D] float32, centroids [P, K, D] float32,
    weights [G, N, D] float32 or None -> codes [P, N] uint8, distances [P, N] float32, sums
    and counts [P, K, D] float64. Requires `available()`."""
    library = _load()
    if library is None:
        raise RuntimeError(f"the compiled host path is not available: {_reason}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    g, n, d = x.shape
    p, k, _ = centroids.shape
    w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    codes = np.empty((p, n), np.uint8)
    distances = np.empty((p, n), np.float32)
    sums = np.empty((p, k, d), np.float64)
    counts = np.empty((p, k, d), np.float64)
    address = None if w is None else w.ctypes.data
    library.vector_step(x, address, centroids, g, n, d, p, k, codes, distances, sums, counts)
    return codes, distances, sums, counts
