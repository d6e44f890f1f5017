"""load/host_path.py drives workload (c) through the engine and the runner's host side to its end."""

from __future__ import annotations

from load import host_path


def test_a_small_run_of_workload_c_ends_every_request() -> None:
    result = host_path.run(batch=4, requests=6, output=None)
    assert result["tokens"] == 6 * 128 and result["engine_us_step"] > 0
