"""StepLog: one summary line per interval, from the steps recorded since the last one."""

from __future__ import annotations

from worker.batch import EngineStats
from worker.step_log import StepLog


def _stats(running: int, free: int) -> EngineStats:
    return EngineStats(num_running=running, num_waiting=3, num_free_tokens=free, capacity_tokens=1000,
                       num_preemptions=0, prefix_query_tokens=0, prefix_hit_tokens=0, steps=0)


def test_a_line_per_interval_with_rates_and_shares() -> None:
    now = [0.0]
    log = StepLog(10.0, clock=lambda: now[0])
    for i in range(9):
        now[0] = i + 1.0
        assert log.step(0.5, 4, _stats(4, 250)) is None
    now[0] = 10.0
    line = log.step(0.5, 4, _stats(4, 250))
    assert line == ("engine: 1.0 steps/s, 4 tok/s, step p50 500.0 ms, in steps 50% of the loop; "
                    "running 4, waiting 3, KV 75% used")
    now[0] = 15.0
    assert log.step(0.1, 1, _stats(1, 1000)) is None  # a new window started at 10 s


def test_off_when_the_interval_is_zero() -> None:
    log = StepLog(0.0, clock=lambda: 100.0)
    assert log.step(1.0, 1, _stats(1, 0)) is None
