"""One request's life in the gateway, from validated input to its last token.

`Lifecycle.run` is the one call a route makes for a generation: it opens the request (an id and
an inbox on the queue client), XADDs it, relays its events a burst at a time, and at the end
records the Finish, or cancels the request wherever it runs (client gone, deadline, error). When
the owner worker's heartbeat disappears, or a seq gap shows that events were lost, it re-enqueues
a continuation — attempt + 1, with every token the client has already been sent appended to the
prompt — and the client's stream goes on without a gap or a duplicate. The gateway's record of
what the client has seen (`RequestState`) lives here and nowhere else.

`complete` and `interleave` run several requests of one HTTP request together (best_of, n,
several prompts); the records a route hands in and reads back (`Run`, `Outcome`) are
gateway/run.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import msgspec
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import CANCELLED, GATEWAY_GONE, GenfleetError
from common.protocol import Accepted, Cancel, Error, Event, Finish, GenerateRequest, Token
from common.sampling_params import SamplingParams
from gateway.fleet import FleetView
from gateway.inbox import Inbox
from gateway.journal import Replay
from gateway.metrics import GatewayMetrics
from gateway.queue_client import QueueClient, QueueFull
from gateway.resume import attach, claim, open_replay
from gateway.run import Outcome, Run

__all__ = ["Lifecycle", "RequestState"]

log = logging.getLogger("genfleet.gateway.lifecycle")

_POLL = 0.25  # seconds between liveness checks while waiting for events
_FINISHED = "finished"
_CANCELLED = "cancelled by id"
_MOVED = "adopted by another gateway"


@dataclass
class RequestState:
    req_id: str
    model: str
    input_ids: list[int]
    params: SamplingParams  # the seed is resolved at validation and kept by every attempt
    deadline: float
    priority: int
    inbox: Inbox[Event] = field(default_factory=Inbox)  # events routed here, taken a burst at a time
    adapter_id: str = ""  # the LoRA adapter every attempt is served by ("" = the base model)
    attempt: int = 0
    owner: str | None = None
    relayed: list[Token] = field(default_factory=list)  # tokens the client has been sent
    entry_id: bytes | str | None = None  # the current attempt's stream entry
    finish: Finish | None = None  # set when the request ends normally
    done: bool = False  # finished or cancelled: nothing more to stop
    moved_to: str | None = None  # the gateway that adopted it from this one: it follows the journal now
    subscription: int = 0  # the queue client's pub/sub subscription its events are known through


@dataclass
class _Watch:
    missing_owner_since: float = 0.0
    no_worker_since: float = 0.0
    journal_refreshed: float = field(default_factory=time.monotonic)


@dataclass
class Lifecycle:
    queue_client: QueueClient
    fleet: FleetView
    metrics: GatewayMetrics
    model: str
    request_timeout: float = 0.0  # seconds end to end; 0 = no limit
    max_attempts: int = 5
    # A queued request with no worker serving its model at all fails after this many heartbeat
    # TTLs rather than waiting forever (there may be no --request-timeout).
    no_worker_ttls: float = 10.0
    scope: str = ""  # digest of --api-key: who may attach to this gateway's requests (gateway/resume.py)
    _cut: str | None = None
    _cancelling: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, run: Run, index: int | None = None) -> AsyncIterator[list[Token]]:
        """Queue one generation and yield its tokens a burst at a time (every event queued when the
        relay wakes); `run.outcome` collects them and the Finish. A run whose id already names a
        request (a resumed stream, a retry) attaches to it instead (gateway/resume.py). Raises
        GenfleetError for an Error event, a passed deadline, a lost fleet. Closing the iterator
        early cancels it."""
        if not self.fleet.state.redis_ok:
            raise GenfleetError("unavailable", "Request queue unavailable: Redis does not answer")
        if run.resume is not None:
            replay = run.replay or await open_replay(self, run, *run.resume)
            bursts = attach(self, run, replay, run.resume[1])
        else:
            claimed = await claim(self, run, index)
            if isinstance(claimed, str):
                bursts = attach(self, run, await open_replay(self, run, claimed, -1), -1)
            else:
                bursts = self._generate(run, claimed)
        async with contextlib.aclosing(bursts) as it:
            async for burst in it:
                yield burst

    async def prepare(self, run: Run) -> None:
        """Before a stream's response starts: check that the stream it resumes may be resumed, so
        that a refusal keeps its status (404, 403, 410)."""
        if run.resume is not None and self.fleet.state.redis_ok:
            run.replay = await open_replay(self, run, *run.resume)

    async def _generate(self, run: Run, msg: GenerateRequest) -> AsyncIterator[list[Token]]:
        req_id, inbox = self.queue_client.open(msg.req_id)
        state = RequestState(req_id, self.model, run.input_ids, run.params, msg.deadline, run.priority, inbox,
                             run.adapter_id, subscription=self.queue_client.subscriptions)
        self.metrics.observe_start(run.outcome, len(state.input_ids), state.params.max_new_tokens)
        try:
            await self._submit(state)
        except GenfleetError:
            self.queue_client.close(req_id)
            await _quietly(self.queue_client.release(req_id))
            raise
        async with contextlib.aclosing(self.follow(state, run.outcome)) as bursts:
            async for burst in bursts:
                yield burst
        if state.moved_to is not None:  # it was taken for dead: follow the request where it went
            after = len(run.outcome.tokens) - 1
            async with contextlib.aclosing(attach(self, run, await open_replay(self, run, msg.req_id, after),
                                                  after)) as bursts:
                async for burst in bursts:
                    yield burst

    def state_of(self, replay: Replay, inbox: Inbox[Event]) -> RequestState:
        """The relay's record of a request taken over from its journal (gateway/resume.py)."""
        first = replay.first
        return RequestState(first.req_id, first.model, first.input_ids, first.params, first.deadline, first.priority,
                            inbox, first.adapter_id, attempt=replay.current.attempt, owner=replay.owner,
                            relayed=list(replay.tokens), subscription=self.queue_client.subscriptions)

    async def follow(self, state: RequestState, outcome: Outcome) -> AsyncIterator[list[Token]]:
        """Relay a queued request's events to its end, or until another gateway adopts it
        (`state.moved_to`); cancel it wherever it runs when it does not get there (the client
        left, an error)."""
        try:
            async for burst in self._relay(state):
                self.metrics.observe_burst(outcome, burst)
                yield burst
            state.done = True
            if state.moved_to is None:
                outcome.finish = state.finish
                self.metrics.observe_finish(outcome)
        finally:
            self.queue_client.close(state.req_id)
            if not state.done:
                await self._cancel(state)

    async def complete(self, runs: Sequence[Run]) -> None:
        """Run every request to its end; the first error cancels the others and is raised."""
        index = _indexes(runs)
        tasks = [asyncio.ensure_future(self._drain(run, index(i))) for i, run in enumerate(runs)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            await _cancel_all(tasks)

    async def interleave(self, runs: Sequence[Run]) -> AsyncIterator[list[tuple[int, list[Token] | None]]]:
        """Run every request at once and yield what they produced, a wake-up at a time: (run
        index, burst), then (run index, None) when that run has finished. The first error
        cancels the others and is raised."""
        inbox: Inbox[tuple[int, list[Token] | None | BaseException]] = Inbox()

        run_index = _indexes(runs)

        async def pump(index: int, run: Run) -> None:
            try:
                async with contextlib.aclosing(self.run(run, run_index(index))) as bursts:
                    async for burst in bursts:
                        inbox.put_nowait((index, burst))
                inbox.put_nowait((index, None))
            except Exception as exc:  # GenfleetError, or a bug: either way the stream must end
                inbox.put_nowait((index, exc))

        tasks = [asyncio.ensure_future(pump(i, run)) for i, run in enumerate(runs)]
        remaining = len(tasks)
        try:
            while remaining:
                await inbox.wait(_POLL)
                items: list[tuple[int, list[Token] | None]] = []
                for index, item in inbox.drain():
                    if isinstance(item, BaseException):
                        if items:
                            yield items
                        raise item
                    remaining -= item is None
                    items.append((index, item))
                if items:
                    yield items
        finally:
            await _cancel_all(tasks)

    def cut(self, why: str) -> None:
        """End every open request with an error (the gateway's grace period is over)."""
        self._cut = why

    async def _drain(self, run: Run, index: int | None) -> None:
        async with contextlib.aclosing(self.run(run, index)) as bursts:
            async for _ in bursts:
                pass

    async def _submit(self, state: RequestState) -> None:
        try:
            try:
                await self._enqueue(state)
            except RedisTimeoutError as exc:
                # A gateway starved of CPU can pass the socket timeout while Redis's reply already
                # waits in the socket: the entry may well be queued. Queue it again as the next
                # attempt, which makes any copy of this one stale; a second timeout is Redis's.
                log.warning("request %s: enqueue timed out (%s); queueing it as attempt %d",
                            state.req_id, exc, state.attempt + 1)
                await self._supersede(state)
                await self._enqueue(state)
        except QueueFull as exc:
            raise GenfleetError("overloaded", f"Model is overloaded: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise GenfleetError("unavailable", f"Request queue unavailable: {exc}") from exc

    async def _enqueue(self, state: RequestState) -> None:
        # A continuation carries what the client has already seen and the remaining budget; the
        # first attempt is the one claimed (`_claim`).
        params = state.params
        relayed = state.relayed
        if relayed:
            params = msgspec.structs.replace(params, max_new_tokens=max(1, params.max_new_tokens - len(relayed)))
        msg = GenerateRequest(
            req_id=state.req_id, attempt=state.attempt, gateway_id=self.queue_client.gateway_id, model=state.model,
            input_ids=state.input_ids, params=params, generated_ids=[t.id for t in relayed],
            deadline=state.deadline, priority=state.priority, enqueued_at=time.time(), scope=self.scope,
            adapter_id=state.adapter_id,
        )
        state.entry_id = await self.queue_client.enqueue(msg, relayed)

    async def _relay(self, state: RequestState) -> AsyncIterator[list[Token]]:
        watch = _Watch()
        while True:
            if self._cut is not None:
                raise GenfleetError("unavailable", self._cut)
            # Events arrive in bursts (one message per worker step): one wake-up takes them all.
            if not await state.inbox.wait(_POLL):
                await self._check_liveness(state, watch)
                continue
            burst, then = self._take(state, state.inbox.drain())
            if burst:
                yield burst  # the tokens before an error or a gap reach the client first
            if then is None:
                continue
            if isinstance(then, GenfleetError):
                raise then
            if then in (_FINISHED, _MOVED):
                return
            if then == _CANCELLED:  # POST /cancel/{id}: stop it everywhere, end the stream normally
                await self._cancel(state, CANCELLED)
                return
            await self._continue(state, then)

    def _take(self, state: RequestState, events: list[Event]) -> tuple[list[Token], str | GenfleetError | None]:
        """The burst of new tokens in `events`, and what comes after it: nothing, the finish, an
        error, or the reason for a continuation (the rest then belongs to the replaced attempt)."""
        burst: list[Token] = []
        relayed = state.relayed
        for event in events:
            if isinstance(event, Error) and event.error_type == CANCELLED:  # from any gateway, any attempt
                state.finish = Finish(state.req_id, state.attempt, len(relayed), "cancelled", len(state.input_ids),
                                      state.params.seed)
                return burst, _CANCELLED
            if event.attempt != state.attempt:
                continue  # a stale attempt
            if isinstance(event, Token):
                expected = len(relayed)
                if event.seq < expected:
                    continue  # already relayed (a duplicate, or a continuation's overlap)
                if event.seq > expected:
                    return burst, f"events lost before seq {event.seq}"
                relayed.append(event)
                burst.append(event)
            elif isinstance(event, Finish):
                if event.seq > len(relayed):
                    return burst, "events lost before the finish"
                state.finish = event
                return burst, _FINISHED
            elif isinstance(event, Error):
                if event.error_type == GATEWAY_GONE:
                    # Taken for dead while it was only stalled: this gateway carries on elsewhere.
                    return burst, f"worker {state.owner} took this gateway for dead"
                return burst, GenfleetError(event.error_type, event.message)
            elif isinstance(event, Accepted):
                if event.gateway_id not in ("", self.queue_client.gateway_id):
                    state.moved_to = event.gateway_id
                    return burst, _MOVED
                state.owner = event.worker_id
        return burst, None

    async def _check_liveness(self, state: RequestState, watch: _Watch) -> None:
        if state.deadline and time.time() > state.deadline:
            raise GenfleetError("timeout", "Request deadline exceeded")
        if state.subscription != self.queue_client.subscriptions:
            # Quiet since pub/sub reconnected: whatever the worker published meanwhile (the
            # finish, maybe) is gone, and nothing would ever tell this request so.
            state.subscription = self.queue_client.subscriptions
            await self._continue(state, "events may have been lost while pub/sub reconnected")
            return
        now = time.monotonic()
        if state.owner is not None and not self.fleet.is_alive(state.owner):
            # One missed refresh is not death: the heartbeat key must stay gone a whole TTL.
            watch.missing_owner_since = watch.missing_owner_since or now
            if now - watch.missing_owner_since >= self.fleet.ttl:
                await self._continue(state, f"worker {state.owner} stopped heart-beating")
                watch.missing_owner_since = 0.0
        else:
            watch.missing_owner_since = 0.0
        if state.owner is None and now - watch.journal_refreshed > self.queue_client.journal_ttl / 3:
            # Queued: no worker refreshes its claim and journal yet.
            watch.journal_refreshed = now
            await _quietly(self.queue_client.refresh_journal(state.req_id))
        fleet = self.fleet.state
        if state.owner is None and fleet.redis_ok and not fleet.serving:
            watch.no_worker_since = watch.no_worker_since or now
            if now - watch.no_worker_since >= self.no_worker_ttls * self.fleet.ttl:
                raise GenfleetError("unavailable", "No worker is serving this model")
        else:
            watch.no_worker_since = 0.0

    async def _continue(self, state: RequestState, why: str) -> None:
        if state.attempt + 1 >= self.max_attempts:
            raise GenfleetError("generation", f"Request failed during generation: {why} (attempt {state.attempt})")
        log.warning("request %s: %s; re-enqueueing attempt %d", state.req_id, why, state.attempt + 1)
        old_owner = state.owner
        await self._supersede(state)
        self.metrics.counters.inc("genfleet_request_continuations")
        await self._submit(state)
        log.info("request %s continues as attempt %d (was on %s)", state.req_id, state.attempt, old_owner)

    async def _supersede(self, state: RequestState) -> None:
        """Stop the current attempt and make the next one current (events of the old are stale)."""
        await self.queue_client.publish_cancel(state.model, state.owner, Cancel(state.req_id, state.attempt, "superseded"))
        state.attempt += 1
        state.owner = None
        state.inbox.clear()  # events of the old attempt still queued locally

    async def _cancel(self, state: RequestState, reason: str = "client_disconnected") -> None:
        """The client is gone (or the deadline passed, or it failed): stop it wherever it runs."""
        state.done = True
        # The caller is usually a response being torn down for a client disconnect, inside a
        # cancelled task or scope where a further await may be cancelled before the PUBLISH leaves
        # (and the request would then run on its worker to the end). A task of its own is not.
        task = asyncio.create_task(self._cancel_everywhere(state, reason), name=f"cancel-{state.req_id}")
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)
        await asyncio.wait({task}, timeout=5.0)

    async def _cancel_everywhere(self, state: RequestState, reason: str) -> None:
        cancel = Cancel(state.req_id, state.attempt, reason)
        await self.queue_client.publish_cancel(state.model, state.owner, cancel)
        # A client reconnecting later is told it was cancelled, rather than waiting for it.
        await _quietly(self.queue_client.append_journal(state.req_id, cancel))
        if state.owner is None and state.entry_id is not None:
            # Nobody accepted it: take it out of the backlog so no worker starts it for nobody.
            await self.queue_client.delete_entry(state.model, state.req_id, state.priority, state.entry_id)


def _indexes(runs: Sequence[Run]) -> Callable[[int], int | None]:
    """Run i's index in its request id: none when it is the only one."""
    return (lambda i: i) if len(runs) > 1 else (lambda i: None)


async def _quietly(call: Awaitable[object]) -> None:
    try:
        await call
    except (RedisError, OSError) as exc:
        log.warning("Redis call failed: %s", exc)


async def _cancel_all(tasks: list[asyncio.Future[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
