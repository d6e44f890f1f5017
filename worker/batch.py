"""The scheduler <-> model runner contract: `ScheduledBatch` goes in, `StepOutput` comes back.

Plain Python on both sides (no tensors): the scheduler never imports torch, and the runner
turns a ScheduledBatch into device tensors in worker/input_builder.py.

Request state is token counters, not phases: a request's `num_computed_tokens` catches up with
its `num_tokens` (prompt + generated). Each step schedules `len(token_ids)` of the tokens not yet
computed; once a request's computed count reaches its total, the step samples its next token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.sampling_params import SamplingParams

__all__ = ["PLACEHOLDER", "ScheduledRequest", "ScheduledBatch", "StepOutput"]

# A token sampled by a step that is still running on the device. With overlapped scheduling the
# engine schedules step N+1 before step N's tokens reach the host; N's token then stands in the
# request's token list as PLACEHOLDER, and the runner takes its value from step N's output on
# the device (`launch(batch, previous)`). The engine writes the real id in when N completes.
PLACEHOLDER = -1


@dataclass(slots=True)
class ScheduledRequest:
    req_id: str
    token_ids: list[int]  # the tokens computed this step: a prompt chunk, or the last sampled token
    start_pos: int  # position of token_ids[0]; equals the request's num_computed_tokens before the step
    block_table: list[int]  # every KV block of the request, covering positions [0, start_pos + len(token_ids))
    do_sample: bool  # True when this step reaches the end of the known tokens: sample the next token
    params: SamplingParams  # the request's sampling parameters (constant over its life)
    # Prompt + generated tokens so far (the request's own list, not a copy): penalties read it.
    all_token_ids: list[int] = field(default_factory=list)
    num_generated: int = 0  # tokens generated before this step (seeded RNG offset, penalties)
    seed: int = 0  # resolved per-request seed: same seed + same prompt => same text in any batch
    prefill_logprobs: bool = False  # return logprobs for the prompt tokens computed this step


@dataclass(slots=True)
class ScheduledBatch:
    step: int  # the engine's step counter
    requests: list[ScheduledRequest]  # decodes first, then prefill chunks (the runner may rely on it)
    num_decode: int  # requests[:num_decode] each compute exactly one token
    num_tokens: int  # sum of len(r.token_ids): never above --max-batch-prefill-tokens
    # Requests whose blocks were freed since the last step (finished, aborted, preempted):
    # the runner drops any per-request state it keeps for them.
    released_req_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StepOutput:
    step: int  # echoes ScheduledBatch.step
    # One entry per ScheduledRequest, in the batch's order:
    req_ids: list[str]
    sampled_token_ids: list[int]  # the next token, or -1 when do_sample was False (mid-prompt chunk)
    logprobs: list[float]  # log-probability of the sampled token (0.0 when not sampled)
    # top_n alternatives per request: [(token_id, logprob), ...]; empty when not asked for.
    top_tokens: list[list[tuple[int, float]]] = field(default_factory=list)
    # Prompt logprobs per request for the tokens computed this step, when asked for.
    prefill_logprobs: dict[str, list[float]] = field(default_factory=dict)
