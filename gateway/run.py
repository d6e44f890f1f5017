"""What a route hands the lifecycle and reads back: one fleet request of an HTTP request (`Run`:
its prompt, parameters and what it resumes) and everything that generation produced (`Outcome`).
gateway/lifecycle.py runs them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.protocol import Finish, Token
from common.sampling_params import SamplingParams
from gateway.journal import Replay

__all__ = ["Outcome", "Run"]


@dataclass
class Outcome:
    """Everything one finished generation produced."""

    tokens: list[Token] = field(default_factory=list)
    finish: Finish | None = None
    started: float = field(default_factory=time.time)
    validated_at: float = 0.0
    first_token_at: float = 0.0
    last_token_at: float = 0.0

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens if not t.special)

    @property
    def mean_logprob(self) -> float:
        return sum(t.logprob for t in self.tokens) / max(1, len(self.tokens))


@dataclass
class Run:
    """One fleet request of an HTTP request: its prompt, its parameters, what it produced."""

    input_ids: list[int]
    params: SamplingParams
    outcome: Outcome
    resume: tuple[str, int] | None = None  # (request id, seq of the last event the client has): Last-Event-ID
    replay: Replay | None = None  # the journal of the request it resumes, once checked (Lifecycle.prepare)
    priority: int = 0  # larger is more urgent (common/streams.py PRIORITY_LEVELS)
    adapter_id: str = ""  # the LoRA adapter serving it ("" = the base model)

    @staticmethod
    def fan_out(input_ids: list[int], run_params: Sequence[SamplingParams], started: float,
                priority: int = 0, adapter_id: str = "") -> list[Run]:
        """One run per parameter set (best_of, n: each with its own seed), timed from `started`."""
        return [Run(input_ids, p, Outcome(started=started), priority=priority, adapter_id=adapter_id)
                for p in run_params]
