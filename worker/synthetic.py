"""A model-free Engine (worker/batch.py), as LLMEngine is one, for measuring the control plane alone.

`--synthetic-tokens-per-s R` swaps it in for the real engine: every step is a fixed tick of 1/R
seconds in which each running request gets one token, as a GPU decode step gives each request of
the batch one token. So a request streams R tokens/s, Redis traffic is one publish per gateway per
tick, and a worker saturates at `max_batch_size * R` tokens/s exactly as a real one saturates at
its batch limit. Token ids are drawn from a seeded generator over ordinary (non-special) ids, so
the output side detokenizes real text and the same seed gives the same tokens.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common.config import WorkerConfig
from common.errors import FinishReason
from worker.batch import EngineStats, RequestOutput
from worker.finish import is_expired
from worker.request import Request, RequestKey

__all__ = ["SyntheticEngine"]

# Ids below this are the special tokens of every tokenizer we ship with; sampling above it keeps
# the synthetic stream free of EOS and control tokens.
_FIRST_ORDINARY_ID = 256


@dataclass(slots=True)
class _Running:
    key: RequestKey
    num_prompt: int
    budget: int  # tokens still to produce
    deadline: float
    rng: random.Random
    top_n: int
    generated: int = 0
    first_scheduled_at: float = 0.0


@dataclass
class SyntheticEngine:
    config: WorkerConfig
    vocab_size: int
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    wall_clock: Callable[[], float] = time.time
    _running: dict[RequestKey, _Running] = field(default_factory=dict)
    _next_tick: float = 0.0
    _steps: int = 0
    _last_batch: int = 0

    def __post_init__(self) -> None:
        if self.config.synthetic_tokens_per_s <= 0:
            raise ValueError("the synthetic engine needs --synthetic-tokens-per-s > 0")
        if self.vocab_size <= _FIRST_ORDINARY_ID:
            raise ValueError(f"vocab of {self.vocab_size} ids is too small for synthetic tokens")
        self.interval = 1.0 / self.config.synthetic_tokens_per_s
        self.capacity_tokens = self.config.max_batch_total_tokens or 32768

    def add_request(self, req: Request) -> None:
        if not req.prompt_ids:
            raise ValueError("empty prompt")
        if req.key in self._running:
            raise ValueError(f"request {req.key} is already running")
        if req.params.grammar is not None:
            raise ValueError("grammar is not supported by a synthetic worker (its tokens are random)")
        if len(req.prompt_ids) + req.params.max_new_tokens > self.capacity_tokens:
            raise ValueError(
                f"prompt ({len(req.prompt_ids)}) + max_new_tokens ({req.params.max_new_tokens}) "
                f"exceeds this worker's capacity of {self.capacity_tokens} tokens"
            )
        self._running[req.key] = _Running(
            key=req.key,
            num_prompt=len(req.prompt_ids),
            budget=req.params.max_new_tokens,
            deadline=req.deadline,
            rng=random.Random(req.seed),
            top_n=req.params.top_n_tokens,
        )

    def abort_request(self, key: RequestKey) -> None:
        self._running.pop(key, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self._running)

    def num_admittable(self) -> int:
        return max(0, self.config.max_batch_size - len(self._running))

    def stats(self) -> EngineStats:
        used = sum(r.num_prompt + r.generated for r in self._running.values())
        return EngineStats(
            num_running=len(self._running),
            num_waiting=0,
            num_free_tokens=max(0, self.capacity_tokens - used),
            capacity_tokens=self.capacity_tokens,
            num_preemptions=0,
            prefix_query_tokens=0,
            prefix_hit_tokens=0,
            steps=self._steps,
            last_batch_tokens=self._last_batch,  # one token per request per step
            last_batch_size=self._last_batch,
            last_batch_num_decode=self._last_batch,  # every request decodes: there is no prefill
        )

    def step(self) -> list[RequestOutput]:
        self._wait_for_tick()
        self._steps += 1
        now = self.wall_clock()
        outputs: list[RequestOutput] = []
        running = self._running
        vocab_size = self.vocab_size
        for req in list(running.values()):
            if not req.first_scheduled_at:
                req.first_scheduled_at = now
            if is_expired(req.deadline, now):
                del running[req.key]
                outputs.append(self._output(req, [], None, expired=True))
                continue
            token = req.rng.randrange(_FIRST_ORDINARY_ID, vocab_size)
            req.generated += 1
            req.budget -= 1
            reason: FinishReason | None = None
            if req.budget <= 0:
                del running[req.key]
                reason = "length"
            if req.top_n:
                outputs.append(self._output(req, [token], reason))
            else:  # the common case, built inline: this loop runs once per token
                outputs.append(RequestOutput(req.key, [token], [-0.1], [], reason, req.num_prompt, 0, None,
                                             req.first_scheduled_at))
        self._last_batch = len(outputs)
        return outputs

    def _wait_for_tick(self) -> None:
        # Fixed ticks; a step that runs late starts the next one immediately but does not try to
        # catch up, so an overloaded worker slows down rather than bursting.
        now = self.clock()
        if self._next_tick > now:
            self.sleep(self._next_tick - now)
            now = self._next_tick
        self._next_tick = now + self.interval

    def _output(self, req: _Running, tokens: list[int], reason: FinishReason | None,
                expired: bool = False) -> RequestOutput:
        top = [[(t, -0.1)] + [(req.rng.randrange(_FIRST_ORDINARY_ID, self.vocab_size), -3.0)
                              for _ in range(req.top_n - 1)] for t in tokens] if req.top_n else []
        return RequestOutput(
            key=req.key,
            new_token_ids=tokens,
            logprobs=[-0.1] * len(tokens),
            top_tokens=top,
            finish_reason=reason,
            num_prompt_tokens=req.num_prompt,
            num_cached_tokens=0,
            first_scheduled_at=req.first_scheduled_at,
            expired=expired,
        )
