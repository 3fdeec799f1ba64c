"""The cost model on a tiny decoder layer (the test command runs it once; the real run is
`python -m benchmarks.cost_model`, whose table is in docs/benchmarks.md)."""

import pytest

from benchmarks.cost_model import CASES, H100, run_case, section


@pytest.mark.parametrize("name", CASES)
def test_cost_model_projects_a_layer(benchmark, name):
    row = run_case(name, dim=64, inter=176, layers=32)
    projection = row["projection"]
    assert projection.syncs == 32  # one sync per prepare call, i.e. per layer here
    assert projection.launches > 0 and projection.bytes_moved > 0
    assert projection.total_s == pytest.approx(
        projection.bandwidth_s + projection.latency_s + projection.launch_s + projection.sync_s
    )
    assert "Projection" in section([row], H100, 32)
    benchmark.extra_info.update(
        {"bytes_per_weight": row["bytes_per_weight"], "projected_s": projection.total_s}
    )
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
