"""Verifying steps overlapped (worker/engine.py): what the engine assumes of a verification still
on the device, and how the verified tokens settle it.

How many tokens a verifying step keeps is known only once it is read, so the engine assumes it
when it schedules the next step before that read (n-gram drafts; speculator heads and
constrained requests run one step at a time):
- all of a request's drafts accepted: those drafts appended, then a PLACEHOLDER for the sample
  after them; the n-gram lookup drafts the next step after its guess of that sample
  (worker/speculative/ngram.py). Taken while the request's latest verified step kept every draft
  (acceptance is mostly all or nothing: the text is being copied or it is not).
- nothing (-1): after a verified step that rejected a draft, for filler drafts, and where the
  assumed tokens would end the request by length. It sits the next step out: it runs one step
  at a time until its drafts are accepted whole again.

When the step is read, each assumption is undone and the verified tokens decide: a row of the
step after it scheduled on a wrong one is stale, and its outputs are dropped (its KV writes land
on positions the request recomputes before it reads them; where it accepted more than assumed,
the request's computed count goes back to what that row left intact, before any prefix hash is
published over it). A right assumption costs nothing; a wrong one costs the device a step whose
row is dropped; sitting out costs the host's turn between two steps, the device idle.

Tried and not kept: after a rejection, assuming none accepted (a PLACEHOLDER for the first row's
sample, the model's token where the first draft was) and drafting after a guess of it other
than the rejected draft, so that the request never sits out. On the input-grounded prompts of
load/bench_speculative.py (CPU, real default model, scheduled as on graphs, one round) it ran
289 steps, 285 of them launched ahead (48 stale), where sitting out runs 240 (152 ahead, 22
stale): 49 more device steps to save 84 host turns, a loss unless a host turn costs more than
0.58 of a device step. The guess of the correcting token is rarely right; a host that waits for
that token drafts from the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker.batch import PLACEHOLDER, ScheduledRequest, StepOutput
from worker.request import RequestStatus

if TYPE_CHECKING:
    from common.errors import FinishReason
    from worker.block_manager import BlockManager
    from worker.finish import FinishRules
    from worker.request import Request, RequestKey
    from worker.speculative.drafter import Drafter

__all__ = ["Assumed", "VerifiedOverlap", "Settled"]


@dataclass(slots=True)
class Assumed:
    """What the engine assumed of a verifying row of a step in flight, and what to undo."""

    num_tokens: int  # the request's token count before (its last one the row's first token)
    num_computed: int  # its computed count before
    accepted: int  # drafts taken as accepted; -1: none assumed (it sits the next step out)


@dataclass(slots=True)
class Settled:
    """A verified row, read: the tokens the request keeps (up to the one that ends it)."""

    token_ids: list[int]
    logprobs: list[float]
    top_tokens: list[list[tuple[int, float]]]
    reason: FinishReason | None


class VerifiedOverlap:
    """Assumptions made of verifying rows in flight, and the settling of verified rows."""

    def __init__(self, finish: FinishRules, blocks: BlockManager, drafter: Drafter) -> None:
        self.finish = finish
        self.blocks = blocks
        self.drafter = drafter
        self.num_stale_rows = 0  # rows scheduled on an assumption that failed

    def assume(self, req: Request, sreq: ScheduledRequest) -> Assumed:
        """Assume what `sreq` (a verifying row of the step in flight) keeps, and count it in `req`."""
        state = req.draft_state
        rejected = state is not None and not state.all_accepted  # its latest verified step rejected one
        accepted = -1 if sreq.filler_drafts or rejected else sreq.num_draft_tokens
        if self.finish.reaches_length(req, extra=accepted + 1):
            accepted = -1
        assumed = Assumed(req.num_tokens, req.num_computed_tokens, accepted)
        if accepted < 0:
            req.num_computed_tokens += 1  # nothing to schedule until it is read
            return assumed
        req.num_computed_tokens += 1 + accepted
        req.all_token_ids += sreq.token_ids[1 : 1 + accepted]
        req.all_token_ids.append(PLACEHOLDER)
        req.num_assumed = accepted + 1
        return assumed

    def settle(self, req: Request, sreq: ScheduledRequest, result: StepOutput, i: int, assumed: Assumed | None,
               step: int, following: set[RequestKey] | None, stale: set[RequestKey] | None) -> Settled:
        """A decode that verified drafts (row `i` of `result`): its first sample, then one token per
        accepted draft, up to the token that ends it. Its KV is valid through the last kept draft,
        so the computed count grows by the tokens kept; the blocks only rejected drafts used go back.

        With `assumed` (the step after it was scheduled on an assumption), that is undone first;
        the following step's row (`following`: the requests that step has a row for) stands if
        the assumption was right, else it joins `stale`, and the KV it overwrites is no longer
        counted as computed."""
        running = req.status is RequestStatus.RUNNING  # not preempted since it was scheduled
        if assumed is not None:
            del req.all_token_ids[assumed.num_tokens :]
            req.num_assumed = 0
            if running:
                req.num_computed_tokens = assumed.num_computed
        verified = result.verified.get(i)
        ids, lps = [result.sampled_token_ids[i]], [result.logprobs[i]]
        tops = [result.top_tokens[i]] if result.top_tokens and result.top_tokens[i] else []
        if verified is not None:
            ids += verified.token_ids
            lps += verified.logprobs
            tops += verified.top_tokens if tops else []
        if req.draft_state is not None and not sreq.filler_drafts:
            self.drafter.observe(req.draft_state, sreq.num_draft_tokens, len(ids) - 1, step)
        reason = None
        kept = 0
        for token in ids:
            req.all_token_ids.append(token)
            kept += 1
            reason = self.finish.after_token(req, token)
            if reason is not None:
                break
        computed = kept
        ahead = False  # the step in flight has a row for it, scheduled on a right assumption
        if assumed is not None and assumed.accepted >= 0 and following is not None and req.key in following:
            ahead = assumed.accepted == len(ids) - 1 or reason is not None
            if not ahead:
                assert stale is not None
                stale.add(req.key)
                self.num_stale_rows += 1
                # It writes from the token after the assumed drafts on: only the KV before that stays.
                computed = min(kept, assumed.accepted + 1)
        if running:
            req.num_computed_tokens += computed
        if not ahead:  # else the step in flight verifies into the blocks past these
            self.blocks.trim(req)
        return Settled(ids[:kept], lps[:kept], tops[:kept], reason)
