"""Results do not depend on the number of torch intra-op threads (issue 14): the same
prepare under 1 and 2 threads gives the same LUTs and indices, scalar and vector."""

import threading

import pytest
import torch
from torch import nn

from coreai_opt_gpu.palettization import (
    KMeansPalettizer,
    KMeansPalettizerConfig,
    ModuleKMeansPalettizerConfig,
    PalettizationSpec,
)


def palettized_state(spec: PalettizationSpec, threads: int, fast: bool) -> dict:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(96, 128), nn.ReLU(), nn.Linear(128, 64)).eval()
        config = KMeansPalettizerConfig(
            global_config=ModuleKMeansPalettizerConfig(
                op_state_spec={"weight": spec}, enable_fast_kmeans_mode=fast
            )
        )
        torch.manual_seed(1)
        KMeansPalettizer(model, config).prepare()
        return {k: v.clone() for k, v in model.state_dict().items()}
    finally:
        torch.set_num_threads(previous)


GROUPED = {"type": "per_grouped_channel", "group_size": 16}


@pytest.mark.parametrize(
    ("spec", "fast"),
    [
        (PalettizationSpec(n_bits=4, granularity=GROUPED), True),
        (PalettizationSpec(n_bits=3, enable_per_channel_scale=True), False),
        (PalettizationSpec(n_bits=3, cluster_dim=2), False),
    ],
    ids=["scalar-fast-g16", "scalar-exact-scaled", "vector-cd2"],
)
def test_results_are_independent_of_the_thread_count(spec, fast):
    one, two = palettized_state(spec, 1, fast), palettized_state(spec, 2, fast)
    assert one.keys() == two.keys()
    for name in one:
        assert torch.equal(one[name], two[name]), name  # exact: LUTs, indices, scales


def test_the_host_vector_engine_runs_on_one_thread_and_restores_the_count(monkeypatch):
    """No oversubscription: the host Lloyd loop (small torch ops around the C step) runs on
    one torch thread, and the caller's thread count comes back, also after an error."""
    from coreai_opt_gpu.engine import vector

    seen = []
    real = vector.ops.assign_update

    def spy(*args):
        seen.append(torch.get_num_threads())
        return real(*args)

    monkeypatch.setattr(vector.ops, "assign_update", spy)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(2, 300, 2)
        vector.cluster_vector(x, 4, seed=0)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2

        def fail(*args):
            raise RuntimeError("boom")

        monkeypatch.setattr(vector.ops, "assign_update", fail)
        with pytest.raises(RuntimeError, match="boom"):
            vector.cluster_vector(x, 4, seed=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


class GlobalCount:
    """torch's thread count kept process-wide."""

    def __init__(self):
        self.value = 2

    def get(self):
        return self.value

    def set(self, value):
        self.value = value


class PerThreadCount(GlobalCount):
    """torch's thread count kept per thread (OpenMP's after a thread's first use)."""

    def __init__(self):
        self.values = threading.local()

    def get(self):
        return getattr(self.values, "value", 2)

    def set(self, value):
        self.values.value = value


@pytest.mark.parametrize("count_cls", [GlobalCount, PerThreadCount], ids=["global", "per-thread"])
def test_overlapping_host_vector_calls_leave_every_threads_count(count_cls, monkeypatch):
    """Two threads clustering at once, forced to overlap (both inside before either leaves,
    the first to enter leaving first): every thread, and the main one, ends with the count it
    had (2), whether torch keeps the count process-wide or per thread."""
    from coreai_opt_gpu.engine import vector

    count = count_cls()
    monkeypatch.setattr(torch, "get_num_threads", count.get)
    monkeypatch.setattr(torch, "set_num_threads", count.set)
    inside = threading.Barrier(2, timeout=30)
    first_done = threading.Event()
    entered, finals, errors = set(), {}, []
    real = vector.ops.assign_update

    def overlapping(*args):
        name = threading.current_thread().name
        if name not in entered:
            entered.add(name)
            inside.wait()  # both threads are inside their calls
            if name == "second":
                assert first_done.wait(30)  # leave after the first thread has left
        return real(*args)

    monkeypatch.setattr(vector.ops, "assign_update", overlapping)

    def work():
        name = threading.current_thread().name
        try:
            vector.cluster_vector(torch.randn(1, 500, 2), 4, seed=0)
        except Exception as err:  # reported below
            errors.append(err)
        finally:
            if name == "first":
                first_done.set()
        finals[name] = count.get()

    first = threading.Thread(target=work, name="first")
    first.start()
    while "first" not in entered:  # the first is inside before the second starts
        threading.Event().wait(0.001)
    second = threading.Thread(target=work, name="second")
    second.start()
    first.join()
    second.join()
    assert not errors
    assert finals == {"first": 2, "second": 2} and count.get() == 2
