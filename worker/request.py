"""A request inside the engine: token counters, not phases. No tensors.

`num_computed_tokens` catches up with `num_tokens` (prompt + generated). A request whose computed
count equals its total samples its next token in the step that got it there. Preemption resets the
count to zero and keeps every token: the recompute covers prompt and output alike.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from common.sampling_params import SamplingParams

__all__ = ["RequestStatus", "Request"]


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # not running: new, or preempted (then `num_preemptions` > 0)
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Request:
    req_id: str
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    arrival_time: float
    deadline: float = 0.0  # unix time; 0 = none
    priority: int = 0
    status: RequestStatus = RequestStatus.WAITING
    all_token_ids: list[int] = field(default_factory=list)  # prompt + generated, grows each step
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    block_table: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache (first admission)
    num_preemptions: int = 0
    first_scheduled_at: float = 0.0
    prefill_logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None

    def __post_init__(self) -> None:
        if not self.all_token_ids:
            self.all_token_ids = list(self.prompt_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - len(self.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.all_token_ids[len(self.prompt_ids) :]

    @property
    def max_tokens(self) -> int:
        """The most tokens this request can ever hold (prompt + its whole budget)."""
        return len(self.prompt_ids) + self.params.max_new_tokens
