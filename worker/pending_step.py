"""A step queued on the device (worker/model_runner.py), and its results read back into a StepOutput.

A launch holds the step's forward results (`Unsampled`) until its sampling is queued: at once, or
later for a step whose grammar masks wait for the tokens of the step before it. Once sampled, every
result sits in one host buffer packed by the step's LogitsLayout; `read_results` unpacks it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker import sampler
from worker.cuda_graphs import Replayed
from worker.batch import NOT_SAMPLED, ScheduledBatch, ScheduledRequest, StepOutput, VerifiedTokens
from worker.input_builder import ModelInputs
from worker.logits_layout import LogitsLayout
from worker.request import RequestKey

__all__ = ["PendingStep", "Unsampled", "read_results"]


@dataclass(slots=True)
class Unsampled:
    """A launched step's forward results, held until its sampling is queued."""

    inputs: ModelInputs
    sampled: list[ScheduledRequest]  # one per sampling row (verify.sampling_rows)
    tensors: sampler.SamplingTensors | None  # None: no row samples; its grammar stage is filled at sampling
    logits: torch.Tensor  # (N, V) float32 on the device, one row per logits row
    hidden: torch.Tensor  # (N, hidden) on the device: the speculator heads read it
    aux: torch.Tensor | None  # (T, 3 * hidden) on the device: an EAGLE-3 draft's input (ModelRunner._split)
    # A graph replay whose head computed these logits (one per hidden row) and their greedy samples;
    # None when the step ran eagerly or its logits are a gather of the graph's.
    replayed: Replayed | None = None


@dataclass(slots=True)
class PendingStep:
    """A step queued on the device; ModelRunner.wait turns it into a StepOutput."""

    batch: ScheduledBatch
    layout: LogitsLayout  # which requests sampled, and where their results sit in `host`
    row_of: dict[RequestKey, int]  # request -> its (first) sampling row in `token_ids`
    # Until `sample` queues its sampling: what that needs (a launch with defer_sample); None after.
    unsampled: Unsampled | None = None
    token_ids: torch.Tensor | None = None  # (n,) int64 on the device: the next step's placeholders read it
    host: torch.Tensor | None = None  # float64 on the host (pinned on CUDA): every result, packed by `layout`
    ready: torch.cuda.Event | None = None  # fires when `host` is filled (CUDA only)
    top_n: int = 0  # top alternatives per sampled row in `host`


def read_results(step: PendingStep) -> StepOutput:
    """The StepOutput of a step whose results have reached `step.host` (ModelRunner.wait)."""
    got = step.layout.unpack(step.host.tolist() if step.host is not None else [], step.top_n)
    reqs = step.batch.requests
    k = step.top_n
    token_ids = [NOT_SAMPLED] * len(reqs)
    logprobs = [0.0] * len(reqs)
    top_tokens: list[list[tuple[int, float]]] = [[] for _ in reqs]

    def top_of(j: int, want: int) -> list[tuple[int, float]]:
        return [(int(got.top_ids[j * k + m]), got.top_logprobs[j * k + m]) for m in range(want)]

    if not k and not step.layout.verify_spans:  # one row per sampling request, no alternatives
        for i, token, logprob in zip(step.layout.sample_batch_idx, got.token_ids, got.logprobs):
            token_ids[i] = int(token)
            logprobs[i] = logprob
    else:
        for j, i in enumerate(step.layout.sample_batch_idx):
            if token_ids[i] != NOT_SAMPLED:
                continue  # a verifying request's later rows: below
            token_ids[i] = int(got.token_ids[j])
            logprobs[i] = got.logprobs[j]
            top_tokens[i] = top_of(j, reqs[i].params.top_n_tokens)
    verified = {}
    for (i, first, _), accepted in zip(step.layout.verify_spans, got.num_accepted, strict=True):
        kept = range(first + 1, first + 1 + int(accepted))
        want = reqs[i].params.top_n_tokens
        verified[i] = VerifiedTokens(
            [int(got.token_ids[j]) for j in kept], [got.logprobs[j] for j in kept],
            [top_of(j, want) for j in kept] if want else [],
        )
    prompt = got.prompt_logprobs
    prefill = {key: prompt[lo:hi] for key, (lo, hi) in step.layout.prompt_spans.items()}
    width = step.layout.num_proposed
    proposals = {i: [int(t) for t in got.proposals[p * width : (p + 1) * width]]
                 for p, (i, _, _) in enumerate(step.layout.proposers)}
    return StepOutput(step.batch.step, [r.key for r in reqs], token_ids, logprobs, top_tokens, prefill, verified,
                      proposals)
