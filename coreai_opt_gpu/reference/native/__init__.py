"""A compiled host path for the two twin steps that numpy runs slowly.

- `dp_layer(prev, sums)` computes one layer of the exact 1-D DP exactly as
  `kmeans_1d_exact._next_layer` does (the same float64 operations in the same order,
  `dp_layer.c`): numpy needs about a dozen vectorized steps per layer, each over every
  candidate, which dominates per-tensor 8-bit layers (255 layers) on the CPU.
- `vector_step(x, centroids, weights)` is one vector Lloyd step exactly as
  `kmeans_vector.assign_update` computes it (`vector_step.c`): numpy makes ~7 passes over
  every (vector, centroid) distance, 95% of a vector layer's time.

Each C source is built on first use with the system's C compiler (`$CC`, else `cc`) into its
own library in a cache directory keyed by the source's hash, and loaded with ctypes.

Dispatch: `available(name)` is False when `COREAI_OPT_GPU_NATIVE=0`, when no compiler is found or
the build fails (the reason is kept in `unavailable_reason(name)`); callers then run numpy. Results
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
HERE = Path(__file__).parent
# one library per source, each built when first used (a scalar-only user never builds
# vector_step.c); -O2 plus the loop vectorizer: -O3 took 4.5 s to build vector_step.c for
# the same speed
FLAGS = ["-O2", "-ftree-vectorize", "-fvect-cost-model=dynamic", "-std=c99", "-fPIC",
         "-shared", "-ffp-contract=off", "-fno-fast-math"]  # fmt: skip
LIBRARIES = ("dp_layer", "vector_step")

_libraries: dict[str, ctypes.CDLL | None] = {}
_reasons: dict[str, str] = {}


def _cache_dir() -> Path:
    """`COREAI_OPT_GPU_NATIVE_CACHE`, else `$XDG_CACHE_HOME/coreai_opt_gpu`, else
    `~/.cache/coreai_opt_gpu`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "coreai_opt_gpu"


def _build(name: str) -> ctypes.CDLL:
    """Compile `name`.c (once per source, compiler and flags, atomically) and load it."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (set CC, or install cc/gcc)")
    source = HERE / f"{name}.c"
    key = hashlib.sha256(source.read_bytes() + " ".join([compiler, *FLAGS, sys.platform]).encode())
    directory = _cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}-{key.hexdigest()[:16]}.so"
    if not target.is_file():
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            built = Path(scratch) / target.name
            done = subprocess.run(
                [compiler, *FLAGS, str(source), "-o", str(built), "-lm"],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[:500]}")
            os.replace(built, target)  # atomic: another process may build the same file
    library = ctypes.CDLL(str(target))
    pointer = np.ctypeslib.ndpointer
    floats = pointer(np.float32, flags="C_CONTIGUOUS")
    doubles = pointer(np.float64, flags="C_CONTIGUOUS")
    if name == "dp_layer":
        library.dp_layer.argtypes = [*[doubles] * 4, ctypes.c_int64, ctypes.c_int64, doubles,
                                     pointer(np.int64, flags="C_CONTIGUOUS")]  # fmt: skip
        library.dp_layer.restype = None
    else:
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


def _load(name: str) -> ctypes.CDLL | None:
    if name not in _libraries:
        try:
            _libraries[name] = _build(name)
        except Exception as err:  # no compiler, a failed build, an unloadable file
            _libraries[name], _reasons[name] = None, str(err)
    return _libraries[name]


def _enabled() -> bool:
    """`COREAI_OPT_GPU_NATIVE`: unset or 1 (use it when it builds), 0 (numpy only)."""
    value = os.environ.get(NATIVE_ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{NATIVE_ENV}={value!r} is not valid; allowed: 0, 1 (or unset)")
    return value == "1"


def available(name: str) -> bool:
    """Whether library `name` (one of LIBRARIES) runs: not disabled, built and loaded."""
    if name not in LIBRARIES:
        raise ValueError(f"no compiled host library {name!r}; allowed: {', '.join(LIBRARIES)}")
    return _enabled() and _load(name) is not None


def unavailable_reason(name: str) -> str | None:
    """Why library `name` is not available (None when it is, or was never tried)."""
    return f"{NATIVE_ENV}=0" if not _enabled() else _reasons.get(name)


def dp_layer(
    prev: np.ndarray, w: np.ndarray, wx: np.ndarray, wxx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """D[k] [G, B+1] float64 and its leftmost argmins [G, B+1] int64 from D[k-1] [G, B+1]
    and the prefix sums of w, w*x, w*x^2 [G, B+1]. Requires `available("dp_layer")`."""
    library = _load("dp_layer")
    if library is None:
        raise RuntimeError(f"the compiled DP layer is not available: {_reasons['dp_layer']}")
    arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in (prev, w, wx, wxx)]
    g_count, width = arrays[0].shape
    cur = np.zeros((g_count, width), np.float64)
    opt = np.zeros((g_count, width), np.int64)
    library.dp_layer(*arrays, g_count, width, cur, opt)
    return cur, opt


MAX_VECTOR_DIM = 8  # vector_step.c's tile buffers (MAX_D); numpy runs wider vectors


def vector_step(
    x: np.ndarray, centroids: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`kmeans_vector.assign_update` in C: x [G, N, D] float32 (1 <= D <= MAX_VECTOR_DIM),
    centroids [P, K, D] float32 (P a multiple of G, K <= 256), weights [G, N, D] float32 or
    None -> codes [P, N] uint8, distances [P, N] float32, sums and counts [P, K, D] float64.
    Requires `available("vector_step")`; shapes are checked here, as C reads them unchecked."""
    library = _load("vector_step")
    if library is None:
        raise RuntimeError(f"the compiled vector step is not available: {_reasons['vector_step']}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    if x.ndim != 3 or centroids.ndim != 3:
        raise ValueError(f"x must be [G, N, D] and centroids [P, K, D], got {x.shape} and "
                         f"{centroids.shape}")  # fmt: skip
    g, n, d = x.shape
    p, k, dc = centroids.shape
    if not (1 <= d <= MAX_VECTOR_DIM and dc == d and g > 0 and p % g == 0 and 1 <= k <= 256):
        raise ValueError(
            f"vector_step takes x [G, N, D] with G >= 1 and 1 <= D <= {MAX_VECTOR_DIM}, "
            f"centroids [P, K, D] with P a multiple of G and 1 <= K <= 256; got x {x.shape}, "
            f"centroids {centroids.shape}"
        )
    if w is not None and w.shape != x.shape:
        raise ValueError(f"weights must be [G, N, D] = {list(x.shape)}, got {list(w.shape)}")
    codes = np.empty((p, n), np.uint8)
    distances = np.empty((p, n), np.float32)
    sums = np.empty((p, k, d), np.float64)
    counts = np.empty((p, k, d), np.float64)
    address = None if w is None else w.ctypes.data
    library.vector_step(x, address, centroids, g, n, d, p, k, codes, distances, sums, counts)
    return codes, distances, sums, counts
