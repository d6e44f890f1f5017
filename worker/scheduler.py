"""Admission, the per-step token budget, chunked prefill and preemption. Never imports torch.

Each step spends at most --max-batch-prefill-tokens tokens of compute:
1. running requests first, oldest first: one token for each decode, the next chunk of a prompt
   still being prefilled. When blocks run out, the newest running request is preempted (its
   blocks freed, its tokens kept; it is recomputed later) until the older one fits.
2. then waiting requests, highest priority first and FIFO within a priority, each taking its
   cached prefix and then as large a chunk of the rest as the budget allows, up to
   --max-batch-size running requests. A request passed over for --max-priority-wait seconds goes
   first whatever its priority (the starvation bound).

Preemption takes the lowest priority first, the newest request within it; a preempted request
waits at the head of its priority level.

Under a sliding window on every layer, each scheduled request first gives back the blocks its
next queries no longer read (BlockManager.release_behind_window), before it asks for new ones.

TGI's knobs, now that prefill is chunked and mixed with decodes in one forward pass: TGI ignores
--waiting-served-ratio and --max-waiting-tokens once chunking is on. Here they keep a meaning:
admission into a non-empty running batch waits until waiting >= ratio x running requests, until
the waiting prompts fill the step's prefill budget, or until --max-waiting-tokens steps have
passed since the last admission. A ratio of 0 (or an empty
batch) admits at every step, which is the default behaviour of a chunked scheduler; the default
ratio 0.3 batches arrivals a little so that prefill chunks share steps. Preempted requests are
never held back: they were admitted once already.

With --speculate, a decode also takes the drafts worker/speculative/drafter.py proposes, each a
token of the budget and a KV slot (so the step can verify them). Drafts take only blocks that
are free anyway: they never preempt, and they leave a block of growth for each running request
after them. Chunked prefill and the prefix cache stay on: drafts are not the request's tokens
until accepted, so no prefix hash covers them. On a runner with verification CUDA graphs
(`uniform_drafts`), a step that verifies drafts gives its other decodes filler drafts so that
every decode verifies as many (`_even_out` says why).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable

from common.config import WorkerConfig
from worker.batch import PLACEHOLDER, ScheduledBatch, ScheduledRequest
from worker.block_manager import BlockManager
from worker.finish import is_expired
from worker.request import Request, RequestKey, RequestStatus
from worker.speculative.drafter import Drafter

__all__ = ["Scheduler"]


class Scheduler:
    def __init__(
        self, config: WorkerConfig, block_manager: BlockManager, max_model_len: int,
        clock: Callable[[], float] = time.time, drafter: Drafter | None = None, uniform_drafts: bool = False,
    ) -> None:
        self.max_batch_size = config.max_batch_size
        self.token_budget = config.max_batch_prefill_tokens
        self.waiting_served_ratio = config.waiting_served_ratio
        self.max_waiting_tokens = config.max_waiting_tokens
        self.max_priority_wait = config.max_priority_wait
        self.max_model_len = max_model_len
        self.blocks = block_manager
        # n-gram drafts by --speculate unless the engine brings the model's speculator heads; on a
        # runner with verification graphs a verification costs about a decode: n-gram never pauses.
        self.drafter = drafter or Drafter(config.speculate or 0, config.speculate_max_batch_size,
                                          pauses=not uniform_drafts)
        self._speculating = False  # this step drafts (Drafter.active when it was scheduled)
        self.uniform_drafts = uniform_drafts  # even out a verifying step's drafts (the runner's graphs)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.step = 0
        self.steps_since_admission = 0
        self.num_preemptions = 0
        self._released: list[RequestKey] = []
        self._clock = clock  # unix seconds, as deadlines and first_scheduled_at

    # -- queue management ------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        # Stable priority order: after every waiting request of the same or higher priority.
        self._insert(req, lambda other: other.priority < req.priority)

    def _insert(self, req: Request, goes_before: Callable[[Request], bool]) -> None:
        """Into `waiting` before the first request for which `goes_before` holds (else last)."""
        index = len(self.waiting)
        for i, other in enumerate(self.waiting):
            if goes_before(other):
                index = i
                break
        self.waiting.insert(index, req)

    def remove(self, req: Request) -> None:
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self.blocks.free(req)
        req.status = RequestStatus.FINISHED
        self._released.append(req.key)

    def expire(self, now: float) -> list[Request]:
        expired = [r for r in (*self.running, *self.waiting) if r.deadline and is_expired(r.deadline, now)]
        for req in expired:
            self.remove(req)
        return expired

    # -- one step -------------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch:
        self.step += 1
        budget = self.token_budget
        scheduled: list[ScheduledRequest] = []
        decodes: list[ScheduledRequest] = []
        # 1. running requests, oldest first; preempt from the newest end when blocks run out.
        preemptions_before = self.num_preemptions
        speculating = self._speculating = self.drafter.active(len(self.running))
        windowed = bool(self.blocks.window)
        i = 0
        # Runs for every running request every step: counters are read once, properties spelled out.
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            left = len(req.all_token_ids) - req.num_computed_tokens
            num_new = min(left, budget)
            if num_new == 0:  # its last token is still being sampled and ends it (overlapped steps)
                i += 1
                continue
            decode = left == 1
            if windowed:
                self.blocks.release_behind_window(req)
            drafts = self._drafts(req, budget - 1, len(self.running) - i - 1) if decode and speculating else []
            if not self._reserve(req, num_new + len(drafts)):
                continue  # `req` itself was preempted; the list shifted under i
            (decodes if decode else scheduled).append(self._scheduled(req, num_new, drafts))
            budget -= num_new + len(drafts)
            i += 1
        if speculating and self.uniform_drafts:
            budget = self._even_out(decodes, budget)
        # 2. waiting requests, unless this step just preempted: the blocks are short, and
        # re-admitting the victim at once would only thrash.
        admitted = 0
        if self.num_preemptions == preemptions_before and self._may_admit():
            admitted = self._admit(budget, scheduled, holds_blocks=bool(scheduled or decodes))
        self.steps_since_admission = 0 if admitted else self.steps_since_admission + 1
        requests = decodes + scheduled
        released: list[RequestKey] = []
        if requests:  # an empty batch never reaches the runner: the next one tells it
            released, self._released = self._released, []
        return ScheduledBatch(
            step=self.step,
            requests=requests,
            num_decode=len(decodes),
            num_tokens=sum(len(r.token_ids) for r in requests),
            released_keys=released,
            speculating=speculating,
        )

    def _admit(self, budget: int, scheduled: list[ScheduledRequest], holds_blocks: bool) -> int:
        """Admit waiting requests into `scheduled` within `budget` tokens; returns how many."""
        admitted = 0
        self._promote_starved()
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            req = self.waiting[0]
            # Prompt logprobs need every prompt position computed: no prefix reuse for them.
            reuse = not req.params.prefill_logprobs
            hit = self.blocks.match_prefix(req, reuse)
            self.blocks.release_behind_window(req)  # a long cached prefix keeps only its window
            num_new = min(req.num_tokens - req.num_computed_tokens, budget)
            need = self.blocks.blocks_needed(req, num_new)
            if not self.blocks.can_allocate(need):
                if not self.running and not holds_blocks and not admitted:
                    # Nothing else holds blocks: the request can never fit this worker.
                    raise RuntimeError(f"request {req.key} needs more KV blocks than the pool has")
                self.blocks.free(req)  # give back the prefix hits until it fits
                break
            self.blocks.allocate(req, num_new)
            if reuse:
                self.blocks.record_lookup(req.num_tokens, hit)
            if req.num_preemptions == 0:
                req.num_cached_tokens = hit
            self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            if not req.first_scheduled_at:
                req.first_scheduled_at = self._clock()
            self.running.append(req)
            scheduled.append(self._scheduled(req, num_new))
            budget -= num_new
            admitted += 1
        return admitted

    def _promote_starved(self) -> None:
        """Move to the head every request passed over past --max-priority-wait (oldest first)."""
        if self.max_priority_wait <= 0 or len(self.waiting) < 2:
            return
        top = self.waiting[0].priority
        cutoff = self._clock() - self.max_priority_wait
        starved = [r for r in self.waiting if r.priority < top and r.arrival_time <= cutoff]
        for req in sorted(starved, key=lambda r: r.arrival_time, reverse=True):
            self.waiting.remove(req)
            self.waiting.appendleft(req)

    def _may_admit(self) -> bool:
        if not self.waiting:
            return False
        if not self.running or self.waiting_served_ratio <= 0 or self.waiting[0].num_preemptions:
            return True  # a preempted request resumes as soon as blocks allow: it was admitted once
        if len(self.waiting) >= self.waiting_served_ratio * len(self.running):
            return True
        if self.steps_since_admission >= self.max_waiting_tokens:
            return True
        # Holding back only batches arrivals into fuller prefill steps: once the waiting prompts
        # fill what this step has left after the decodes, waiting longer gains nothing. (A worker
        # reads only about that much from the shared stream, so the ratio alone could stall it.)
        pending = 0
        for req in self.waiting:
            pending += req.num_tokens - req.num_computed_tokens
            if pending >= self.token_budget - len(self.running):
                return True
        return False

    def _drafts(self, req: Request, budget: int, num_after: int) -> list[int]:
        """The drafts a decoding request verifies this step: within the step's budget, its
        remaining tokens (max_new_tokens and the model's length, the sample that ends each run
        counted), and the blocks free beyond one of growth for each of the `num_after` running
        requests scheduled after it. A constrained request drafts nothing: its mask follows its own
        sampled tokens one at a time.

        With `uniform_drafts` max_new_tokens does not cut them: near its end a request still
        verifies all its drafts (the engine keeps only the tokens up to the limit), so the step
        keeps the shape of the verification CUDA graph (worker/cuda_graphs.py) instead of running
        eagerly. Elsewhere a draft past the limit would be work for nothing."""
        if req.grammar is not None:
            return []
        limit = min(budget, self.max_model_len - req.num_tokens - 1)
        if not self.uniform_drafts:
            limit = min(limit, req.params.max_new_tokens - req.num_output_tokens - 1)
        if limit <= 0:
            return []
        drafts, req.draft_state = self.drafter.propose(req.all_token_ids, req.draft_state, limit, self.step,
                                                       req.num_tokens - req.num_assumed)
        if drafts and not self.blocks.can_allocate(self.blocks.blocks_needed(req, 1 + len(drafts)) + num_after):
            return []
        return drafts

    def _even_out(self, decodes: list[ScheduledRequest], budget: int) -> int:
        """In a step that verifies drafts, give each decode without any as many filler drafts as
        the others verify, where its budget, the model's length and free blocks allow; returns the
        budget left.

        Why fill rather than run such a mixed step eagerly: only a step whose decodes all bring
        the same number of tokens replays a verification CUDA graph (worker/cuda_graphs.py), and
        below --speculate-max-batch-size (where drafting stops) a decode step reads every weight
        once whatever its row count, so k more rows per decode cost a few percent on a graph,
        while an eager forward of the same step costs several replays' worth in kernel launches.
        A filler is the request's last token repeated: verification is lossless whatever a draft
        is, and a filler that happens to be right is kept like any draft. The drafter does not
        count fillers, so a request it paused stays paused. A constrained request gets none (its
        mask follows its own tokens one at a time): a step with one beside drafts runs eagerly."""
        width = max((r.num_draft_tokens for r in decodes), default=0)
        if width == 0:
            return budget
        running = {r.key: r for r in self.running}
        for j, sreq in enumerate(decodes):
            req = running[sreq.key]
            if sreq.num_draft_tokens or req.grammar is not None or min(budget, self.max_model_len - req.num_tokens - 1) < width:
                continue
            if not self.blocks.can_allocate(self.blocks.blocks_needed(req, 1 + width)):
                continue
            self.blocks.allocate(req, 1 + width)
            # The last token repeated; a PLACEHOLDER (overlapped steps) by the newest known token.
            filler = next(t for t in reversed(req.all_token_ids) if t >= 0)
            decodes[j] = dataclasses.replace(sreq, token_ids=sreq.token_ids + [filler] * width, num_draft_tokens=width,
                                             filler_drafts=True)
            budget -= width
        return budget

    def _reserve(self, req: Request, num_new: int) -> bool:
        """Make room for `num_new` tokens of a running request; False if it was preempted itself."""
        need = self.blocks.blocks_needed(req, num_new)
        if need == 0:  # most decodes: the last block has room
            return True
        while not self.blocks.can_allocate(need):
            victim = self._victim(req)
            self._preempt(victim)
            if victim is req:
                return False
        self.blocks.allocate(req, num_new)
        return True

    def _victim(self, req: Request) -> Request:
        """The lowest-priority request of `req` and those after it in `running` (oldest first; the
        ones before it are already in this step), the newest of them."""
        candidates = self.running[self.running.index(req):]
        lowest = min(r.priority for r in candidates)
        return next(r for r in reversed(candidates) if r.priority == lowest)

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.blocks.free(req)
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        # At the head of its priority level: it was admitted once and resumes before newer ones.
        self._insert(req, lambda other: other.priority <= req.priority)
        self._released.append(req.key)

    def _scheduled(self, req: Request, num_new: int, drafts: list[int] | None = None) -> ScheduledRequest:
        start = req.num_computed_tokens
        do_sample = start + num_new == len(req.all_token_ids)
        propose = (self._speculating and do_sample and req.grammar is None
                   and self.drafter.wants_proposals(req.draft_state, self.step))
        tokens = req.all_token_ids[start : start + num_new]
        return ScheduledRequest(
            key=req.key,
            token_ids=tokens + drafts if drafts else tokens,
            start_pos=start,
            block_table=req.block_table,
            do_sample=do_sample,
            params=req.params,
            all_token_ids=req.all_token_ids,
            num_generated=len(req.all_token_ids) - len(req.prompt_ids) + req.num_generated_offset,
            grammar=req.grammar,
            seed=req.seed,
            prefill_logprobs=req.params.prefill_logprobs and start < req.num_prompt_tokens,
            num_draft_tokens=len(drafts) if drafts else 0,
            num_proposals=self.drafter.num_speculative if propose else 0,
            adapter_id=req.adapter_id,
            placeholder_row=req.num_assumed - 1 if tokens[0] == PLACEHOLDER else 0,
        )
