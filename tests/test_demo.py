"""The README's demo runs and reports size, error and time."""

import pytest

from coreai_opt_gpu.demo import main


@pytest.mark.parametrize("bits", [3, 4])
def test_demo_reports_size_error_time(bits, capsys):
    main(["--bits", str(bits), "--layers", "1", "--dim", "64", "--group-size", "8"])
    out = capsys.readouterr().out
    assert f"{bits}-bit" in out and "MiB" in out and "smaller" in out
    assert "model output relative error" in out and "prepare time" in out
    assert "nan" not in out.lower()
