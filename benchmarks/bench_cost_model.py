"""The cost model on a tiny decoder layer (the test command runs it once; the real run is
`python -m benchmarks.cost_model`, whose table is in docs/benchmarks.md)."""

import pytest

from benchmarks.cost_model import (
    CASES,
    FOUR_BIT,
    H100,
    Checkpoint,
    cluster_section,
    project_cluster,
    run_case,
    section,
)


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


def test_cluster_projection_covers_every_step(benchmark):
    tiny = Checkpoint("tiny", dim=64, inter=176, kv_dim=16, layers=4, vocab=128)
    row = run_case(FOUR_BIT, tiny.dim, tiny.inter, layers=tiny.layers, kv_dim=tiny.kv_dim)
    assert row["weights_per_layer"] == sum(tiny.layer_weights())
    job = project_cluster(row, tiny)
    assert job["total_s"] == pytest.approx(sum(job["steps"].values()))
    assert 0 < job["steps"]["cluster (largest share)"] < job["one_gpu_cluster_s"]
    layers_only = tiny.layers * sum(tiny.layer_weights())  # one GPU: the layers and the head
    assert job["one_gpu_cluster_s"] == pytest.approx(
        row["projection"].total_s * job["clustered"] / layers_only
    )
    assert job["largest_share"] >= job["clustered"] / 8
    assert "torchrun --nproc-per-node 8" in cluster_section(row, tiny)
    benchmark.extra_info.update({"projected_s": job["total_s"]})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
