"""The engine: schedule, run, update. Owned by one thread; the worker process feeds it.

The runner (`Runner` below: worker/model_runner.py on a real model; tests use fakes) turns a
ScheduledBatch into a StepOutput. The engine decides nothing about tensors; worker/finish.py's
rules decide when a request ends.

Overlapped scheduling (runners that can overlap: `launch(batch, previous) -> handle`, then
`wait(handle) -> StepOutput`): while step N runs on the device, the engine already counts N's
tokens as computed, puts a PLACEHOLDER where each request's sampled token will go, schedules
step N+1 and launches it; only then does it wait for N. The host's scheduling, input building
and output handling thus hide behind the device's work instead of leaving it idle between steps.
A request that N finishes (EOS) has one wasted row in N+1, which is dropped. Steps whose requests
need the real token history on the host (repetition/frequency/presence penalties, prompt
logprobs) run one at a time, as does everything when the runner cannot overlap.

Speculative decoding overlaps too (n-gram drafts; speculator heads and constrained requests run
one step at a time): how many tokens a verifying step keeps is assumed until it is read, and the
verified tokens settle it (worker/speculative/overlap.py).

Constrained requests (a grammar) wait outside the scheduler while worker/grammar.py compiles
their matcher on its own threads, so a cold schema never stalls the other requests' steps; the
engine advances each matcher with every sampled token. Their steps overlap too, in two halves:
the next token's mask needs the token just sampled, but the forward that scores it does not. So
step N+1 is launched up to its logits (`launch(..., defer_sample=True)`) before N is read; the
engine then reads N, advances the matchers with N's tokens, and only then queues N+1's sampling
(`sample(handle, ended)`), which fills N+1's masks on the mask threads (worker/grammar_mask.py)
while the device still runs N+1's forward. A request that N ended (EOS, the grammar's end, an
error) gets no mask in N+1, and its row's sample is dropped like any other. Constrained requests
do not draft (worker/scheduler.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ALL_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from common.config import WorkerConfig
from common.errors import FinishReason
from worker.batch import NOT_SAMPLED, PLACEHOLDER, EngineStats, RequestOutput, ScheduledBatch, ScheduledRequest, StepOutput
from worker.block_manager import BlockManager
from worker.finish import FinishRules
from worker.request import Request, RequestKey, RequestStatus
from worker.scheduler import Scheduler
from worker.speculative.drafter import Drafter
from worker.speculative.overlap import Assumed, VerifiedOverlap

if TYPE_CHECKING:
    from worker.grammar import GrammarCompiler
    from worker.speculative.heads import DraftSource

__all__ = ["LLMEngine", "Runner"]

# How long a step with nothing to run waits for a grammar being compiled (then the loop looks again).
_COMPILE_POLL_S = 0.02


class Runner(Protocol):
    """worker/model_runner.py's ModelRunner; tests/fakes.py's FakeRunner."""

    can_overlap: bool  # False: the engine calls `execute` only, one step at a time
    # True: steps whose decodes all verify as many drafts run faster (verification CUDA graphs),
    # so the scheduler evens out a verifying step's drafts.
    uniform_drafts: bool

    def execute(self, batch: ScheduledBatch) -> StepOutput: ...

    def launch(self, batch: ScheduledBatch, previous: Any, *, defer_sample: bool = False) -> Any:
        """Queue `batch` (after `previous`, whose samples fill its placeholders); with `defer_sample`
        only up to its logits: `sample` queues the rest."""

    def sample(self, handle: Any, ended: frozenset[RequestKey]) -> None:
        """Queue a deferred launch's sampling, its grammar masks filled from the matchers as they are
        now; the rows of `ended` requests get none (their samples are dropped)."""

    def wait(self, handle: Any) -> StepOutput: ...


@dataclass(slots=True)
class _InFlight:
    """A step launched on the device whose outputs the engine has not read yet."""

    batch: ScheduledBatch
    handle: Any
    advanced: bool = False  # its tokens already count as computed; PLACEHOLDERs stand for its samples
    placeholders: frozenset[RequestKey] = frozenset()  # requests holding a PLACEHOLDER for this step
    assumed: dict[RequestKey, Assumed] = field(default_factory=dict)  # its verifying rows, once advanced
    # Rows scheduled on an assumption that the step before proved wrong: their outputs are dropped.
    stale: set[RequestKey] = field(default_factory=set)
    keys: frozenset[RequestKey] = frozenset()  # the requests it has a row for


class LLMEngine:
    """The Engine (worker/batch.py) over a model runner."""

    def __init__(
        self,
        config: WorkerConfig,
        runner: Runner,
        *,
        num_blocks: int,
        eos_token_ids: frozenset[int],
        max_model_len: int,
        clock: Callable[[], float] = time.time,
        grammars: GrammarCompiler | None = None,
        speculator: DraftSource | None = None,
        kv_window: int = 0,
    ) -> None:
        self.runner = runner
        self.block_size = config.block_size
        # kv_window: ModelConfig.kv_window (every layer slides): blocks behind it are given back.
        self.blocks = BlockManager(num_blocks, config.block_size, config.prefix_caching, kv_window)
        # The model's speculator heads draft where it has them (the runner's `speculator`); else n-gram.
        drafter = None
        if speculator is not None:
            drafter = Drafter(speculator.num_heads, config.speculate_max_batch_size, speculator.method)
        self.scheduler = Scheduler(config, self.blocks, max_model_len, clock, drafter, runner.uniform_drafts)
        self.finish = FinishRules(eos_token_ids, max_model_len)
        self.max_model_len = max_model_len
        self.max_batch_size = config.max_batch_size
        self.capacity_tokens = num_blocks * config.block_size
        self._clock = clock  # unix seconds: deadlines are wall-clock times
        self._requests: dict[RequestKey, Request] = {}
        self._aborts: list[RequestKey] = []
        self._mean_prompt = float(4 * config.block_size)  # prior before any request arrived
        self.last_batch: ScheduledBatch | None = None  # the step whose outputs came last
        self.overlap = config.overlap_scheduling and runner.can_overlap
        self._inflight: _InFlight | None = None
        self.verified = VerifiedOverlap(self.finish, self.blocks, self.scheduler.drafter)
        self.num_launched_ahead = 0  # steps launched before the step before them was read
        self.grammars = grammars  # None: constrained requests are refused
        self._compiling: list[tuple[Request, Future[Any]]] = []  # constrained, matcher not ready yet

    # -- API -------------------------------------------------------------------------------------
    def add_request(self, req: Request) -> None:
        need = req.num_prompt_tokens + req.params.max_new_tokens
        if not req.prompt_ids:
            raise ValueError("the prompt is empty")
        if need > self.max_model_len:
            raise ValueError(
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_model_len}. "
                f"Given: {req.num_prompt_tokens} `inputs` tokens and {req.params.max_new_tokens} `max_new_tokens`"
            )
        held = self.blocks.tokens_held(need, self.scheduler.token_budget)  # under a window: less than need
        if held > self.capacity_tokens:
            raise ValueError(f"the request needs {held} KV tokens; this worker holds {self.capacity_tokens}")
        if req.key in self._requests:
            raise ValueError(f"request {req.key} is already running")
        if req.params.grammar is not None and self.grammars is None:
            raise ValueError("grammar is not supported by this worker")
        self._requests[req.key] = req
        if req.params.grammar is not None and self.grammars is not None:
            self._compiling.append((req, self.grammars.start(req.params.grammar, req.generated_before)))
        else:
            self.scheduler.add(req)
        self._mean_prompt += (req.num_prompt_tokens - self._mean_prompt) / 16  # moving mean, ~16 requests

    def abort_request(self, key: RequestKey) -> None:
        self._aborts.append(key)

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests) or bool(self._aborts) or self._inflight is not None
    def num_admittable(self) -> int:
        """How many more requests the worker should read from the shared stream right now.

        A worker must not hoard requests that another worker could start sooner: it takes only
        what it can start at once. Waiting requests already held count against both the KV
        cache (free tokens, less one block of growth per running request) and two steps' prefill
        budget (so the next step's prompts are already here while one step runs, and a step never
        waits on a Redis round trip for work); what is left, divided by the mean prompt size seen
        so far, bounded by the free batch slots, is the answer. Below a 5% free-cache watermark it
        is 0.
        """
        sched = self.scheduler
        slots = self.max_batch_size - len(sched.running) - len(sched.waiting)
        if slots <= 0 or self.blocks.num_free_blocks * 20 < self.blocks.num_blocks:
            return 0
        waiting = sum(r.num_tokens - r.num_computed_tokens for r in sched.waiting)
        kv_room = self.blocks.num_free_tokens - len(sched.running) * self.block_size - waiting
        room = min(kv_room, 2 * sched.token_budget - waiting)
        if room <= 0:
            return 0
        per_request = max(self.block_size, round(self._mean_prompt))
        return min(slots, -(-room // per_request))

    def stats(self) -> EngineStats:
        sched, batch = self.scheduler, self.last_batch
        spec = sched.drafter.stats
        return EngineStats(
            num_running=len(sched.running),
            num_waiting=len(sched.waiting),
            num_free_tokens=self.blocks.num_free_tokens,
            capacity_tokens=self.capacity_tokens,
            num_preemptions=sched.num_preemptions,
            prefix_query_tokens=self.blocks.prefix_query_tokens,
            prefix_hit_tokens=self.blocks.prefix_hit_tokens,
            steps=sched.step,
            last_batch_tokens=batch.num_tokens if batch is not None else 0,
            last_batch_size=len(batch.requests) if batch is not None else 0,
            last_batch_num_decode=batch.num_decode if batch is not None else 0,
            speculation=sched.drafter.method,
            speculate=sched.drafter.num_speculative,
            draft_tokens=spec.draft_tokens,
            accepted_draft_tokens=spec.accepted_tokens,
            drafted_by_position=tuple(spec.drafted_by_position),
            accepted_by_position=tuple(spec.accepted_by_position),
        )

    def step(self) -> list[RequestOutput]:
        self._apply_aborts()
        outputs = self._admit_compiled()
        for req in self.scheduler.expire(self._clock()):
            outputs.append(self._output(req, [], [], [], None, expired=True))
            self._requests.pop(req.key, None)
        if not self.overlap:
            batch = self.scheduler.schedule()
            self._note_batch(batch)
            if not batch.requests:
                return outputs
            return outputs + self._update(batch, self.runner.execute(batch))
        runner = self.runner
        current, self._inflight = self._inflight, None
        if current is None:
            batch = self.scheduler.schedule()
            if not batch.requests:
                self._note_batch(batch)
                return outputs
            current = _InFlight(batch, runner.launch(batch, None))
        following, masked = None, False
        if self._may_run_ahead(current.batch):
            self._advance(current)
            batch = self.scheduler.schedule()
            if batch.requests:
                masked = any(r.grammar is not None and r.do_sample for r in batch.requests)
                # A step with grammar masks is launched up to its logits; it samples once N is read.
                following = _InFlight(batch, runner.launch(batch, current.handle, defer_sample=masked),
                                      keys=frozenset(r.key for r in batch.requests))
                self._inflight = following
                self.num_launched_ahead += 1
        self._note_batch(current.batch)
        outputs += self._update(current.batch, runner.wait(current.handle), current)
        if following is not None and masked:  # N's tokens are in the matchers now: N+1's masks
            ended = frozenset(r.key for r in following.batch.requests if r.key not in self._requests)
            runner.sample(following.handle, ended)
        return outputs

    # -- internals -------------------------------------------------------------------------------
    def _note_batch(self, batch: ScheduledBatch) -> None:
        self.last_batch = batch

    def _may_run_ahead(self, batch: ScheduledBatch) -> bool:
        # Penalties and prompt logprobs read the real token history on the host; the heads'
        # drafts follow a token count known only once the step is read. (Grammar masks wait for
        # the token too, but only the sampling does: `defer_sample`; beside drafts they run one
        # step at a time.) A verified step's count is assumed (`_advance`).
        drafter = self.scheduler.drafter
        if drafter.active(len(self.scheduler.running)) and (
                drafter.uses_heads or any(r.grammar is not None for r in batch.requests)):
            return False
        return not any(r.prefill_logprobs or r.params.has_penalties() or r.num_proposals for r in batch.requests)

    def _admit_compiled(self) -> list[RequestOutput]:
        """Schedule the constrained requests whose matcher is ready; end those whose grammar failed."""
        if not self._compiling:
            return []
        sched = self.scheduler
        if not sched.running and not sched.waiting and self._inflight is None:
            # Nothing else to run: wait (a while) for all of them, so that requests which arrived
            # together start in one step rather than in waves of whichever compiled first.
            wait([f for _, f in self._compiling], timeout=_COMPILE_POLL_S, return_when=ALL_COMPLETED)
        outputs, pending = [], []
        for req, future in self._compiling:
            if self._requests.get(req.key) is not req:
                future.cancel()  # aborted while compiling
            elif not future.done():
                pending.append((req, future))
            elif (exc := future.exception()) is not None:
                del self._requests[req.key]
                outputs.append(self._output(req, [], [], [], None, error=f"Input validation error: {exc}"))
            else:
                req.grammar = future.result()
                sched.add(req)
        self._compiling = pending
        return outputs

    @property
    def num_stale_rows(self) -> int:
        """Rows scheduled on an assumption that failed (overlapped speculation)."""
        return self.verified.num_stale_rows

    def _advance(self, step: _InFlight) -> None:
        """Count `step` as computed before its outputs are read; a PLACEHOLDER for each sample,
        after the drafts a verifying row is assumed to keep (VerifiedOverlap.assume).

        A request whose sample will end it by length gets none: it has nothing left to schedule.
        """
        held = []
        requests, reaches_length = self._requests, self.finish.reaches_length
        stale = step.stale
        for sreq in step.batch.requests:
            req = requests.get(sreq.key)
            if req is None or req.status is not RequestStatus.RUNNING or sreq.key in stale:
                continue
            if sreq.num_draft_tokens:
                step.assumed[req.key] = self.verified.assume(req, sreq)
                continue
            req.num_computed_tokens += len(sreq.token_ids)
            if not sreq.do_sample or reaches_length(req, extra=1):
                continue
            req.all_token_ids.append(PLACEHOLDER)
            req.num_assumed = 1
            held.append(req.key)
        step.placeholders = frozenset(held)
        step.advanced = True

    def _apply_aborts(self) -> None:
        aborts, self._aborts = self._aborts, []
        for key in aborts:
            req = self._requests.pop(key, None)
            if req is not None:
                self.scheduler.remove(req)

    def _update(self, batch: ScheduledBatch, result: StepOutput, step: _InFlight | None = None) -> list[RequestOutput]:
        outputs = []
        advanced = step is not None and step.advanced
        placeholders = step.placeholders if step is not None and step.advanced else frozenset()
        # Runs for every request of every step: what the loop reads is looked up once here.
        after_token, requests, sampled = self.finish.after_token, self._requests, result.sampled_token_ids
        commit = self.blocks.commit if self.blocks.enable_prefix_caching else None
        for i, sreq in enumerate(batch.requests):
            req = requests.get(sreq.key)
            if req is None or (step is not None and sreq.key in step.stale):
                continue  # finished or aborted while this step ran; or scheduled on a wrong assumption
            if sreq.num_draft_tokens:  # a verified decode: its computed count follows what it keeps
                assumed = step.assumed.get(sreq.key) if step is not None else None
                outputs.append(self._update_verified(req, sreq, result, i, assumed))
                continue
            if not advanced:
                req.num_computed_tokens += len(sreq.token_ids)
            if commit is not None:
                commit(req)
            prefill_lp = result.prefill_logprobs.get(req.key) if result.prefill_logprobs else None
            if prefill_lp is not None:
                # prefill_lp[k] scores token start_pos + k + 1. Keep prompt tokens only, each once:
                # a recompute after preemption covers positions already scored, and output tokens.
                have = len(req.prefill_logprobs)
                skip = have - sreq.start_pos
                assert skip >= 0, "prompt logprobs skipped a position"
                req.prefill_logprobs.extend(prefill_lp[skip : skip + max(0, req.num_prompt_tokens - 1 - have)])
            token = sampled[i]
            if token == NOT_SAMPLED:
                continue
            if req.key in placeholders:
                assert req.all_token_ids[-1] == PLACEHOLDER, "a placeholder was not the newest token"
                req.all_token_ids[-1] = token
                req.num_assumed = 0
            else:
                req.all_token_ids.append(token)
            if req.grammar is not None and not req.grammar.consume_token(token):
                # The mask allowed it, but the lexer went past its limits (worker/grammar.py).
                self._remove(req)
                error = req.grammar.get_error().splitlines()[0]
                outputs.append(self._output(req, [], [], [], None, error=f"Input validation error: grammar is not valid: {error}"))
                continue
            if result.proposals:
                self._take_proposals(req, result, i)
            reason = after_token(req, token)
            top = [result.top_tokens[i]] if result.top_tokens and result.top_tokens[i] else []
            out = self._output(req, [token], [result.logprobs[i]], top, reason)
            if req.params.prefill_logprobs and req.num_output_tokens == 1:
                out.prefill_logprobs = list(req.prefill_logprobs)
            outputs.append(out)
            if reason is not None:
                self._remove(req)
        return outputs

    def _update_verified(self, req: Request, sreq: ScheduledRequest, result: StepOutput, i: int,
                         assumed: Assumed | None) -> RequestOutput:
        following = self._inflight
        settled = self.verified.settle(req, sreq, result, i, assumed, self.scheduler.step,
                                       following.keys if following is not None else None,
                                       following.stale if following is not None else None)
        self._take_proposals(req, result, i)
        self.blocks.commit(req)
        out = self._output(req, settled.token_ids, settled.logprobs, settled.top_tokens, settled.reason)
        self._end_if(req, settled.reason)
        return out

    def _take_proposals(self, req: Request, result: StepOutput, i: int) -> None:
        # The heads' drafts follow the last token this step kept (each verified next step).
        drafts = result.proposals.get(i)
        if drafts is not None:
            req.draft_state = self.scheduler.drafter.offer(req.draft_state, len(req.all_token_ids), drafts)

    def _end_if(self, req: Request, reason: FinishReason | None) -> None:
        if reason is not None:
            self._remove(req)

    def _remove(self, req: Request) -> None:
        self.scheduler.remove(req)
        del self._requests[req.key]

    @staticmethod
    def _output(
        req: Request, ids: list[int], lps: list[float], top: list[list[tuple[int, float]]],
        reason: FinishReason | None, expired: bool = False, error: str | None = None,
    ) -> RequestOutput:
        return RequestOutput(
            key=req.key,
            new_token_ids=ids,
            logprobs=lps,
            top_tokens=top,
            finish_reason=reason,
            num_prompt_tokens=req.num_prompt_tokens,
            num_cached_tokens=req.num_cached_tokens,
            first_scheduled_at=req.first_scheduled_at,
            expired=expired,
            error=error,
        )
