"""Results do not depend on the number of torch intra-op threads (issue 14): the same
prepare under 1 and 2 threads gives the same LUTs and indices, scalar and vector."""

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
