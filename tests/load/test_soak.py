"""Three minutes of mixed traffic against a serve-style fleet on the real default model (CPU):
nothing is left in flight, queued or running afterwards, no KV block leaks, and neither the
gateway's nor the worker's RSS grows 5% past the warm-up. load/soak.py runs the same for longer:
`python -m load.soak --duration 1800`."""

from __future__ import annotations

from pathlib import Path

from load.soak import SoakConfig, run


def test_three_minutes_of_mixed_traffic_leave_nothing_behind(default_model_dir: Path, tmp_path: Path) -> None:
    report = run(SoakConfig(duration=180, warmup=45, users=2), log_path=str(tmp_path / "fleet.log"))
    print(report.to_markdown())
    assert sum(report.outcomes.values()) >= 2, report.outcomes  # the traffic really ran
    assert not report.failures, report.failures
