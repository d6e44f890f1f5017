"""An HTTP request attached to a fleet request that already exists: a stream resumed with
`Last-Event-ID` (through any gateway), or a retry naming its request by x-request-id or
Idempotency-Key. Either way the request is generated once and every client of it gets the same
tokens.

The request's claim and journal (common/streams.py; gateway/journal.py folds them) say where it
stands. Ended: the answer is replayed from the journal. Running, and its gateway is gone (or is
this one, restarted): this gateway adopts it — an Adopt on the journal and to its owner, which
answers with an Accepted on this gateway's channel and publishes there from then on; the journal
holds everything before that Accepted, the channel everything after, and the relay
(gateway/lifecycle.py) dedupes by seq, so the client sees no gap and no duplicate. Running, and
its gateway is alive (a retry while the first call runs): this gateway follows the journal,
reading what each step appended, and the request stays its first gateway's to cancel.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import GenfleetError, ValidationError
from common.protocol import Accepted, Adopt, Event, GenerateRequest, Token
from gateway.inbox import Inbox
from gateway.journal import Replay

if TYPE_CHECKING:
    from gateway.lifecycle import Lifecycle
    from gateway.run import Outcome, Run
    from gateway.queue_client import QueueClient

__all__ = ["claim", "attach", "open_replay", "claimed", "check_ended", "same_request", "check_scope",
           "parse_last_event_id"]

log = logging.getLogger("genfleet.gateway.resume")

_FOLLOW_POLL = 0.05  # seconds between journal reads while following
_GATEWAY_CHECK = 1.0  # seconds between checks that a followed request's gateway is still alive
_ADOPT_WAIT = 1.0  # seconds to wait for the owner's Accepted before asking again
_ADOPT_TRIES = 3


def parse_last_event_id(value: str | None, request_id: str | None) -> tuple[str, int] | None:
    """(request id, seq) from a `Last-Event-ID` header (`<request id>:<seq>`, as our events' `id:`
    lines); None without one. The request id must be the one named by x-request-id, if any."""
    if value is None:
        return None
    rid, sep, seq = value.strip().rpartition(":")
    if not sep or not rid or not seq.isdigit() or len(seq) > 9:
        raise GenfleetError("bad_request", "`Last-Event-ID` must be `<request id>:<seq>`, as the stream's `id:` lines")
    if request_id is not None and request_id != rid:
        raise GenfleetError("bad_request", f"`Last-Event-ID` names request {rid}, `x-request-id` {request_id}")
    return rid, int(seq)


def check_scope(existing: GenerateRequest, scope: str) -> None:
    """Only the API key that submitted a request may attach to it or cancel it."""
    if existing.scope != scope:
        raise GenfleetError("forbidden", f"Request {existing.req_id} belongs to another API key")


def same_request(existing: GenerateRequest, run: Run, scope: str) -> bool:
    """Whether `run` asks what `existing` (a claim) asked: the same prompt and parameters, the
    seed aside (each call without one draws its own). Another key's request raises."""
    check_scope(existing, scope)
    unseeded = msgspec.structs.replace
    return (existing.input_ids == run.input_ids and existing.adapter_id == run.adapter_id
            and unseeded(existing.params, seed=None) == unseeded(run.params, seed=None))


async def claim(lc: Lifecycle, run: Run, index: int | None) -> GenerateRequest | str:
    """The request `run` queues under its id (now claimed), or the id of the same request already
    running or ended (a retry). An id that names another request gets a suffix."""
    qc = lc.queue_client
    base = req_id = qc.request_id(index)
    deadline = time.time() + lc.request_timeout if lc.request_timeout > 0 else 0.0
    while True:
        msg = GenerateRequest(req_id=req_id, attempt=0, gateway_id=qc.gateway_id, model=lc.model,
                              input_ids=run.input_ids, params=run.params, deadline=deadline, priority=run.priority,
                              scope=lc.scope, adapter_id=run.adapter_id)
        try:
            try:
                existing = await qc.claim(msg)
            except RedisTimeoutError:
                # A gateway starved of CPU past its socket timeout may have Redis's reply waiting:
                # the claim may have landed. Asking again tells, as it then holds this very request.
                existing = await qc.claim(msg)
                existing = None if existing == msg else existing
        except (RedisError, OSError) as exc:
            raise GenfleetError("unavailable", f"Request queue unavailable: {exc}") from exc
        if existing is None:
            return msg
        if same_request(existing, run, lc.scope):
            log.info("request %s is a retry: answered from the running or finished request", req_id)
            return req_id
        req_id = f"{base}-{uuid.uuid4().hex[:6]}"


async def claimed(qc: QueueClient, req_id: str) -> GenerateRequest:
    """The request that holds id `req_id` (its claim): 404 when none does, 503 without Redis."""
    try:
        first = await qc.claimed(req_id)
    except (RedisError, OSError) as exc:
        raise GenfleetError("unavailable", f"Request queue unavailable: {exc}") from exc
    if first is None:
        raise GenfleetError("unknown_request", f"No request {req_id} to resume: it is unknown, or it ended "
                            "longer ago than its journal is kept")
    return first


async def open_replay(lc: Lifecycle, run: Run, req_id: str, after: int) -> Replay:
    """Request `req_id`'s journal, folded, once checked that `run` may attach to it after seq
    `after`: raises the refusal (404, 403, 422, 410) before any response starts."""
    qc = lc.queue_client
    first = await claimed(qc, req_id)
    if not same_request(first, run, lc.scope):
        raise ValidationError(f"the request body differs from that of request {req_id}")
    replay = Replay(first)
    try:
        replay.fold(await qc.journal(req_id))
    except (RedisError, OSError) as exc:
        raise GenfleetError("unavailable", f"Request queue unavailable: {exc}") from exc
    if replay.gone:
        check_ended(replay)
    if replay.ended and after >= len(replay.tokens):
        raise GenfleetError("request_gone", f"Request {req_id} cannot resume after seq {after}: it ended after "
                            f"{len(replay.tokens)} tokens")
    return replay


async def attach(lc: Lifecycle, run: Run, replay: Replay, after: int) -> AsyncIterator[list[Token]]:
    """Yield the tokens of `replay`'s request after seq `after` (-1: all), then its live ones:
    replayed, followed through its journal while the gateway it publishes to lives, else adopted
    (and followed again if another gateway adopts it meanwhile)."""
    qc = lc.queue_client
    outcome = run.outcome
    catchup = _Catchup(outcome, after)
    log.info("request %s resumed after seq %d (%d tokens in its journal, its gateway %s)", replay.req_id, after,
             len(replay.tokens), replay.reply_to)
    pending = catchup.fresh(replay)
    counters = lc.metrics.counters
    if replay.ended:
        counters.inc("genfleet_request_attached", how="replayed")
    while not replay.ended:
        if pending:  # what the journal held when it was read last
            lc.metrics.observe_burst(outcome, pending)
            yield pending
            pending = []
        if await _follows(lc, replay):
            counters.inc("genfleet_request_attached", how="followed")
            async for _ in _follow(lc, replay):
                pending = catchup.fresh(replay)
                if pending:
                    lc.metrics.observe_burst(outcome, pending)
                    yield pending
                    pending = []
            continue  # it ended, or its gateway went away: adopt it
        # Adopt it: from here on it is this gateway's request, cancelled when this client leaves.
        counters.inc("genfleet_request_attached", how="adopted")
        req_id, inbox = qc.open(replay.req_id)
        state = lc.state_of(replay, inbox)
        try:
            await _adopt(lc, replay, inbox)
            pending = catchup.fresh(replay)
        except BaseException:
            qc.close(req_id)
            raise
        if replay.ended:
            qc.close(req_id)
            break
        state.attempt, state.owner = replay.current.attempt, replay.owner
        state.relayed = list(replay.tokens)
        if pending:
            lc.metrics.observe_burst(outcome, pending)
            yield pending
            pending = []
        async for burst in lc.follow(state, outcome):  # it adds every burst to the outcome
            burst = [t for t in burst if t.seq > catchup.after]
            if burst:
                yield burst
        if state.moved_to is None:
            return
        # Another gateway adopted it at the same time, and the owner took its Adopt last.
        log.info("request %s: gateway %s adopted it too; following it there", replay.req_id, state.moved_to)
        catchup.relayed()
        replay.reply_to = state.moved_to
        replay.fold(await qc.journal(replay.req_id, replay.read))
        pending = catchup.fresh(replay)  # what the owner journaled with that Accepted
    if pending:  # the tokens before an error reach the client first, as from the relay
        lc.metrics.observe_burst(outcome, pending)
        yield pending
    check_ended(replay)
    outcome.finish = replay.finish


class _Catchup:
    """Which of a journal's tokens go to the client: none it has (seq <= `after`), none twice.
    The journal of a running request may lag the client by up to --checkpoint-interval
    (worker/checkpoint.py): the tokens it already has join its outcome without being sent.

    It reads the folded journal's tokens, not what each fold added: every read of the journal
    (while following it, while waiting for an owner's Accepted, after losing an adoption) then
    reaches the client, whichever code path made it."""

    def __init__(self, outcome: Outcome, after: int) -> None:
        self.outcome = outcome
        self.after = after
        self.next = len(outcome.tokens)  # the next seq the outcome (with what is pending) lacks

    def fresh(self, replay: Replay) -> list[Token]:
        """The tokens of `replay` from seq `next` on that the client lacks (replay.tokens[i]
        has seq i)."""
        out = []
        for t in replay.tokens[self.next:]:
            self.next += 1
            if t.seq <= self.after:
                self.outcome.tokens.append(t)
            else:
                out.append(t)
        return out

    def relayed(self) -> None:
        """The relay has sent (and added to the outcome) every token up to its end."""
        self.next = len(self.outcome.tokens)
        self.after = max(self.after, self.next - 1)


async def _follows(lc: Lifecycle, replay: Replay) -> bool:
    """Follow the journal (the request stays with its gateway) rather than adopt it?"""
    qc = lc.queue_client
    if replay.reply_to == qc.gateway_id:
        return qc.is_open(replay.req_id)  # a retry of a request this gateway relays; else restarted
    return await qc.gateway_alive(replay.reply_to)


async def _follow(lc: Lifecycle, replay: Replay) -> AsyncIterator[None]:
    """Read the growing journal into `replay`, yielding after each read that added tokens, until
    the request ends or its gateway goes away (then the caller adopts it)."""
    qc = lc.queue_client
    checked = time.monotonic()
    first = replay.first
    while not replay.ended:
        if first.deadline and time.time() > first.deadline:
            raise GenfleetError("timeout", "Request deadline exceeded")
        if replay.fold(await qc.journal(replay.req_id, replay.read)):
            yield None
            continue
        now = time.monotonic()
        if now - checked >= _GATEWAY_CHECK:
            checked = now
            if not await _follows(lc, replay):
                return
        await asyncio.sleep(_FOLLOW_POLL)


def check_ended(replay: Replay) -> None:
    """Raise what ended `replay`'s request when it did not finish: cancelled (410) or its error."""
    if replay.gone:
        raise GenfleetError("request_gone", f"Request {replay.req_id} was cancelled: its client left, or none came "
                            "back within the gateway grace period")
    if replay.error is not None:
        raise GenfleetError(replay.error.error_type, replay.error.message)


async def _adopt(lc: Lifecycle, replay: Replay, inbox: Inbox[Event]) -> None:
    """Make the owner publish to this gateway; `replay` then holds every token it journaled
    before it did (the Accepted it sends here comes with that journal write)."""
    qc = lc.queue_client
    adopt = Adopt(replay.req_id, qc.gateway_id)
    await qc.append_journal(replay.req_id, adopt)
    early: list[Event] = []
    for _ in range(_ADOPT_TRIES):
        await qc.publish_adopt(replay.current.model, replay.owner, adopt)
        deadline = time.monotonic() + _ADOPT_WAIT
        while time.monotonic() < deadline and not _acked(early, replay):
            if await inbox.wait(max(0.0, deadline - time.monotonic())):
                early += inbox.drain()
        if _acked(early, replay):
            break
        replay.fold(await qc.journal(replay.req_id, replay.read))
        if replay.ended:
            break
    else:
        # The relay goes on without it: a seq gap, once the owner answers, makes it a continuation.
        log.warning("request %s: owner %s did not answer %d Adopts in %.0f s", replay.req_id, replay.owner,
                    _ADOPT_TRIES, _ADOPT_TRIES * _ADOPT_WAIT)
    # Everything the owner published before its Accepted here is in the journal by now.
    replay.fold(await qc.journal(replay.req_id, replay.read))
    for event in early + inbox.drain():
        inbox.put_nowait(event)  # the relay takes them in order, dropping what the journal gave


def _acked(events: list[Event], replay: Replay) -> bool:
    return any(isinstance(e, Accepted) and e.attempt == replay.current.attempt for e in events)
