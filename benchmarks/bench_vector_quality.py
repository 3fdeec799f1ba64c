"""`python -m benchmarks.vector_quality` on two random configs (the test command runs it
once; the real run and its figures are in docs/benchmarks.md, vector quality)."""

import importlib.util
import math

import pytest

from benchmarks.vector_quality import measure, random_config, summary

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("coreai_opt") is None,
    reason="needs the reference coreai_opt 0.3.0 (the bench extra)",
)


def test_vector_quality_measures_every_weight_in_both_packages(benchmark):
    cases = [random_config(0, index) for index in range(2)]
    assert random_config(0, 1) == cases[1]  # drawn from (seed, index) alone
    rows = [row for case in cases for row in measure(case)]
    measured = [row for row in rows if "ratio" in row]
    assert measured and len(measured) == len(rows)
    for row in measured:
        assert row["se_ours"] > 0 and row["se_reference"] > 0
        assert math.isfinite(row["ratio"]) and 0.3 < row["ratio"] < 3.0
    assert "median" in summary(rows)
    benchmark.extra_info.update({"ratios": [row["ratio"] for row in measured]})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
