"""load/part_times.py: the named functions add their CPU time while entered and are themselves again after."""

from __future__ import annotations

import time

from load.part_times import PartTimes
from worker import sampler


def _busy(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_parts_add_their_time_and_are_put_back() -> None:
    original = sampler.prepare
    with PartTimes([("prepare", "worker.sampler", "prepare")]):
        assert sampler.prepare is not original
    assert sampler.prepare is original


def test_a_wrapped_method_accumulates_and_resets() -> None:
    class_path = ("slow", "tests.load.test_part_times", "_Slow.work")
    with PartTimes([class_path]) as timer:
        _Slow().work()
        _Slow().work()
        assert timer.seconds["slow"] >= 0.02
        timer.reset()
        assert timer.seconds == {"slow": 0.0}
    assert _Slow.work is _WORK


class _Slow:
    def work(self) -> None:
        _busy(0.01)


_WORK = _Slow.work
