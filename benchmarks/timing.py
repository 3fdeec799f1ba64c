"""Wall-clock timing shared by the benchmarks (CUDA-synchronized when a GPU is present)."""

import time

import torch


def seconds_per_call(fn, repeat: int) -> float:
    """Mean seconds of `fn()` over `repeat` calls, after one warm-up call."""
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat
