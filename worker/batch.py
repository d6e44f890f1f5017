"""The worker's two contracts, each one way and plain Python (no tensors).

- Scheduler <-> model runner: `ScheduledBatch` goes in, `StepOutput` comes back. The scheduler
  never imports torch; the runner turns a ScheduledBatch into device tensors in
  worker/input_builder.py.
- Worker loop <-> engine: `Engine` (LLMEngine on a model, SyntheticEngine without one) takes
  requests and returns `RequestOutput`s step by step, and reports its load as `EngineStats`.

Request state is token counters, not phases: a request's `num_computed_tokens` catches up with
its `num_tokens` (prompt + generated). Each step schedules `len(token_ids)` of the tokens not yet
computed; once a request's computed count reaches its total, the step samples its next token.

Speculative decoding (worker/speculative/) adds draft tokens after a decode's last token: the
step computes and samples every one of those rows, and the request keeps its first sample plus
one more for each draft the samples accept (`StepOutput.verified`). Drafts never enter a
request's token list or its computed count until accepted. Speculator heads propose the next
step's drafts in the step that samples (`num_proposals` in, `StepOutput.proposals` out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from common.errors import FinishReason
from common.sampling_params import SamplingParams
from worker.request import Request, RequestKey

__all__ = [
    "PLACEHOLDER", "NOT_SAMPLED", "ScheduledRequest", "ScheduledBatch", "VerifiedTokens", "StepOutput",
    "RequestOutput", "EngineStats", "Engine",
]

# A token sampled by a step that is still running on the device. With overlapped scheduling the
# engine schedules step N+1 before step N's tokens reach the host; N's token then stands in the
# request's token list as PLACEHOLDER, and the runner takes its value from step N's output on
# the device (`launch(batch, previous)`). The engine writes the real id in when N completes.
PLACEHOLDER = -1
# StepOutput.sampled_token_ids of a request that did not sample this step (a mid-prompt chunk).
NOT_SAMPLED = -2


@dataclass(slots=True)
class ScheduledRequest:
    key: RequestKey
    # The tokens computed this step: a prompt chunk, or the last sampled token (then its drafts).
    token_ids: list[int]
    start_pos: int  # position of token_ids[0]; equals the request's num_computed_tokens before the step
    # Every KV block of the request, covering positions [0, start_pos + len(token_ids)); under a
    # sliding window the entries before it may be stale ids (given back, never read).
    block_table: list[int]
    do_sample: bool  # True when this step reaches the end of the known tokens: sample the next token
    params: SamplingParams  # the request's sampling parameters (constant over its life)
    # Prompt + generated tokens so far (the request's own list, not a copy): penalties read it.
    all_token_ids: list[int] = field(default_factory=list)
    num_generated: int = 0  # tokens generated before this step (seeded RNG offset, penalties)
    seed: int = 0  # resolved per-request seed: same seed + same prompt => same text in any batch
    prefill_logprobs: bool = False  # return logprobs for the prompt tokens computed this step
    # The request's llguidance matcher, past every token generated so far (the sampler masks the
    # next token with it); None when unconstrained.
    grammar: Any = None
    # Speculative decoding: token_ids ends with this many draft tokens to verify (a decode only);
    # the block table covers them too. Every row samples; 0 = a plain step.
    num_draft_tokens: int = 0
    # Those drafts are fillers, not the drafter's: they only give the step one verification
    # graph's shape (worker/scheduler.py `_even_out`); the drafter's acceptance never counts them.
    filler_drafts: bool = False
    # Speculator heads: after this step's sample, propose this many drafts to follow it (verified
    # next step); 0 = none. Only a sampling row of a step that speculates.
    num_proposals: int = 0
    # The LoRA adapter whose updates its rows get ("" = the base model): worker/lora/.
    adapter_id: str = ""
    # A PLACEHOLDER first token (overlapped steps) is the previous step's sample in this request's
    # sampling row `placeholder_row`: after that many of its drafts, which the engine assumed accepted.
    placeholder_row: int = 0


@dataclass(slots=True)
class ScheduledBatch:
    step: int  # the engine's step counter
    requests: list[ScheduledRequest]  # decodes first, then prefill chunks (the runner may rely on it)
    num_decode: int  # requests[:num_decode] each compute their last token (and its drafts, if any)
    num_tokens: int  # sum of len(r.token_ids): never above --max-batch-prefill-tokens
    # Requests whose blocks were freed since the last step (finished, aborted, preempted):
    # the runner drops any per-request state it keeps for them.
    released_keys: list[RequestKey] = field(default_factory=list)
    # The step speculates (the drafter was active when it was scheduled): a draft model with a
    # KV of its own (EAGLE-3) extends it over every token of the step, and proposes.
    speculating: bool = False


@dataclass(slots=True)
class VerifiedTokens:
    """A verified request's tokens after its first sample: one per accepted draft (the model's
    sample at the position the draft filled), in order; empty when every draft was rejected."""

    token_ids: list[int]
    logprobs: list[float]
    top_tokens: list[list[tuple[int, float]]]  # per token: [(token_id, logprob)], [] when top_n is 0


@dataclass(slots=True)
class StepOutput:
    step: int  # echoes ScheduledBatch.step
    # One entry per ScheduledRequest, in the batch's order:
    keys: list[RequestKey]
    sampled_token_ids: list[int]  # the next token, or NOT_SAMPLED when do_sample was False
    logprobs: list[float]  # log-probability of the sampled token (0.0 when not sampled)
    # top_n alternatives per request: [(token_id, logprob), ...]; empty when not asked for.
    top_tokens: list[list[tuple[int, float]]] = field(default_factory=list)
    # Prompt logprobs per request for the tokens computed this step, when asked for.
    prefill_logprobs: dict[RequestKey, list[float]] = field(default_factory=dict)
    # By batch index, each request that verified drafts: what followed sampled_token_ids[i].
    verified: dict[int, VerifiedTokens] = field(default_factory=dict)
    # By batch index, each request that asked for proposals: the heads' drafts to follow the last
    # token it keeps this step.
    proposals: dict[int, list[int]] = field(default_factory=dict)


@dataclass(slots=True)
class RequestOutput:
    key: RequestKey
    new_token_ids: list[int]
    logprobs: list[float]
    top_tokens: list[list[tuple[int, float]]]
    finish_reason: FinishReason | None  # decided by worker/finish.py's rules
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens reused from the prefix cache
    prefill_logprobs: list[float] | None = None  # on the step the prompt completes
    first_scheduled_at: float = 0.0
    expired: bool = False  # its deadline passed: it ends with a timeout Error, not a Finish
    error: str | None = None  # it cannot be served (its grammar): it ends with a validation Error

    @property
    def is_last(self) -> bool:
        return self.finish_reason is not None or self.expired or self.error is not None


@dataclass(slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_tokens: int
    capacity_tokens: int
    num_preemptions: int  # running totals since start: metrics turn them into increments
    prefix_query_tokens: int
    prefix_hit_tokens: int
    steps: int
    last_batch_tokens: int = 0  # tokens computed by the last step
    last_batch_size: int = 0  # requests in the last step
    last_batch_num_decode: int = 0  # of those, requests that decoded one token (the rest prefilled)
    speculation: str | None = None  # the drafting method ("ngram", "medusa", "mlp_speculator", "eagle3"), None when off
    speculate: int = 0  # --speculate: most drafts per request and step
    # Speculative decoding, running totals: draft tokens verified and accepted, and per draft
    # position j the verified steps that drafted a token j and that accepted it.
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    drafted_by_position: tuple[int, ...] = ()
    accepted_by_position: tuple[int, ...] = ()


class Engine(Protocol):
    """What the worker loop drives; one thread owns it (worker/worker.py)."""

    def add_request(self, req: Request) -> None:
        """Take a request admitted from the wire (Request.from_wire).

        Raises:
            ValueError: it can never be served here (empty, too long, already running).
        """

    def abort_request(self, key: RequestKey) -> None:
        """Drop the request at the next step, without an output; unknown keys are ignored."""

    def has_unfinished_requests(self) -> bool: ...

    def num_admittable(self) -> int:
        """How many more requests the worker should read from the shared stream now."""

    def stats(self) -> EngineStats: ...

    def step(self) -> list[RequestOutput]:
        """One step: each output carries a request's new tokens, and ends it when `is_last`."""
