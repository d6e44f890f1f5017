"""What one load run recorded: a record per request, pooled inter-token gaps, tokens per 100 ms.

Filled by load/run_load.py's clients; summarised by load/report.py, which reads nothing else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RequestRecord", "RunResult"]

_ITL_SAMPLE = 200_000  # ITLs kept for percentiles and plots (reservoir), bounding memory


@dataclass(slots=True)
class RequestRecord:
    start: float  # seconds after the run began
    ttft: float | None  # seconds to the first token
    e2e: float  # seconds to the end of the stream (or the error)
    output_tokens: int
    prompt_chars: int
    error: str | None = None


@dataclass
class RunResult:
    label: str
    meta: dict[str, Any]
    duration: float = 0.0
    records: list[RequestRecord] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    token_times: list[int] = field(default_factory=list)  # output tokens per 100 ms bin
    _itl_seen: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def add_itl(self, gap: float) -> None:
        self._itl_seen += 1
        if len(self.itl) < _ITL_SAMPLE:
            self.itl.append(gap)
        else:
            j = self._rng.randrange(self._itl_seen)
            if j < _ITL_SAMPLE:
                self.itl[j] = gap

    def add_tokens(self, at: float, n: int) -> None:
        b = int(at * 10)
        if b >= len(self.token_times):
            self.token_times.extend([0] * (b + 1 - len(self.token_times)))
        self.token_times[b] += n
