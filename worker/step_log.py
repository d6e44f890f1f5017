"""A periodic one-line summary of the engine loop, for operators reading logs (and benchmarks).

Every `interval` seconds the worker logs what its engine did since the last line: steps and
tokens per second, the median step, the share of the loop's wall time spent inside engine steps
(the rest is admission, output hand-off and idling), the batch and queue sizes, and KV use.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

from worker.batch import EngineStats

__all__ = ["StepLog"]

log = logging.getLogger("genfleet.worker.stats")


class StepLog:
    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._start = clock()
        self._steps: list[float] = []
        self._tokens = 0

    def step(self, seconds: float, tokens: int, stats: EngineStats) -> str | None:
        """Record one engine step; returns the summary line when one was due (and logs it)."""
        if self.interval <= 0:
            return None
        self._steps.append(seconds)
        self._tokens += tokens
        now = self._clock()
        elapsed = now - self._start
        if elapsed < self.interval:
            return None
        used = 1.0 - stats.num_free_tokens / stats.capacity_tokens if stats.capacity_tokens else 0.0
        line = (
            f"engine: {len(self._steps) / elapsed:.1f} steps/s, {self._tokens / elapsed:,.0f} tok/s, "
            f"step p50 {statistics.median(self._steps) * 1e3:.1f} ms, in steps {sum(self._steps) / elapsed:.0%} "
            f"of the loop; running {stats.num_running}, waiting {stats.num_waiting}, KV {used:.0%} used"
        )
        log.info("%s", line)
        self._start, self._steps, self._tokens = now, [], 0
        return line
