"""The parts of the control-plane benchmark that run without a fleet: the in-process baseline and
the machine-share probe that every recorded figure carries."""

from __future__ import annotations

import pytest

from load.control_plane import _direct_runs, machine_share


def test_direct_baseline_streams_at_the_engine_rate() -> None:
    (run,) = _direct_runs(1, rate=500.0, tokens=6)
    assert run["ttft"] < 0.05  # an idle engine's first tick is immediate
    assert len(run["itl"]) == 5
    assert run["e2e"] == pytest.approx(5 / 500.0, abs=0.05)


def test_machine_share_is_a_fraction_of_one_core() -> None:
    assert 0.0 < machine_share(0.05) <= 1.05
