"""The gateway's side of Redis: XADD requests, one pub/sub subscription routed to per-request queues.

Each in-flight request has a `RequestState`: what attempt is current, who owns it, every token
already relayed to the client. That state is the single record of what the client has seen, which
is what makes continuations (a new attempt after a lost owner) safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from common.log import request_id_var
from common.protocol import Accepted, Cancel, Event, Finish, GenerateRequest, ProtocolError, decode_events, encode
from common.sampling_params import SamplingParams
from common.streams import CONSUMER_GROUP, REQUEST_FIELD, Keys
from gateway.inbox import Inbox

__all__ = ["RequestState", "QueueClient", "QueueFull"]

log = logging.getLogger("genfleet.gateway.queue")


class QueueFull(RuntimeError):
    pass


@dataclass
class RequestState:
    req_id: str
    model: str
    input_ids: list[int]
    params: SamplingParams
    deadline: float
    attempt: int = 0
    owner: str | None = None
    relayed_ids: list[int] = field(default_factory=list)  # tokens the client has been sent
    enqueued_at: float = 0.0
    accepted_at: float = 0.0
    entry_id: bytes | str | None = None  # the current attempt's stream entry
    queue: Inbox[Event] = field(default_factory=Inbox)  # events routed here, taken a burst at a time
    finish: Finish | None = None  # set by the relay when the request ends normally
    done: bool = False


class QueueClient:
    def __init__(self, client: aioredis.Redis, keys: Keys, gateway_id: str, max_queue_length: int) -> None:
        self._redis = client
        self._keys = keys
        self.gateway_id = gateway_id
        self._max_queue_length = max_queue_length
        self._states: dict[str, RequestState] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._groups_ready: set[str] = set()
        self._cancelling: set[asyncio.Task[None]] = set()
        self._reserved: set[str] = set()  # ids handed out by new_state and not yet submitted

    @property
    def in_flight(self) -> int:
        return len(self._states)

    def states(self) -> list[RequestState]:
        return list(self._states.values())

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="pubsub-listener")
        await asyncio.wait_for(self._subscribed.wait(), timeout=10)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except (asyncio.CancelledError, RedisError):
                pass

    # -- requests ---------------------------------------------------------------------------------
    def new_state(self, model: str, input_ids: list[int], params: SamplingParams, deadline: float) -> RequestState:
        # The HTTP request's id (x-request-id) names the request fleet-wide when it is free, so
        # gateway and worker logs match; fan-outs (best_of, n) and reused ids get a suffix.
        base = request_id_var.get() or uuid.uuid4().hex
        req_id = base
        while req_id in self._states or req_id in self._reserved:
            req_id = f"{base}-{uuid.uuid4().hex[:6]}"
        self._reserved.add(req_id)
        return RequestState(req_id, model, input_ids, params, deadline)

    async def submit(self, state: RequestState, priority: int = 0) -> None:
        """XADD the request's current attempt. Raises QueueFull before queueing when over the bound."""
        try:
            await self._enqueue(state, priority)
        finally:
            # Only now: until the state is registered, its id must stay taken.
            self._reserved.discard(state.req_id)

    async def _enqueue(self, state: RequestState, priority: int) -> None:
        stream = self._keys.request_stream(state.model)
        await self._ensure_group(stream)
        if await self._redis.xlen(stream) >= self._max_queue_length:
            # Workers delete entries when they accept them, so XLEN is the unserved backlog.
            raise QueueFull(f"the request queue holds {self._max_queue_length} entries")
        remaining = state.params.max_new_tokens - len(state.relayed_ids)
        params = state.params if not state.relayed_ids else _with_budget(state.params, remaining)
        state.enqueued_at = time.time()
        msg = GenerateRequest(
            req_id=state.req_id,
            attempt=state.attempt,
            gateway_id=self.gateway_id,
            model=state.model,
            input_ids=state.input_ids,
            params=params,
            generated_ids=list(state.relayed_ids),
            deadline=state.deadline,
            priority=priority,
            enqueued_at=state.enqueued_at,
        )
        self._states[state.req_id] = state
        try:
            state.entry_id = await self._redis.xadd(stream, {REQUEST_FIELD: encode(msg)})
        except BaseException:
            self._states.pop(state.req_id, None)
            raise

    async def cancel(self, state: RequestState, reason: str = "client_disconnected") -> None:
        """The client is gone (or the deadline passed): stop the request wherever it runs."""
        self._states.pop(state.req_id, None)
        if state.done:
            return
        state.done = True
        # The caller is usually a response being torn down for a client disconnect: Starlette
        # cancels its task group, and anyio then cancels every further await in that scope, so an
        # awaited PUBLISH would never leave and the request would run on its worker to the end. A
        # task of its own is outside that scope.
        task = asyncio.create_task(self._cancel_final(state, reason), name=f"cancel-{state.req_id}")
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)
        await asyncio.wait({task}, timeout=5.0)

    async def _cancel_final(self, state: RequestState, reason: str) -> None:
        await self.cancel_attempt(state, reason)
        if state.owner is None and state.entry_id is not None:
            # Nobody accepted it: take it out of the backlog so no worker starts it for nobody.
            try:
                await self._redis.xdel(self._keys.request_stream(state.model), state.entry_id)
            except RedisError as exc:
                log.warning("could not delete the queued entry of %s: %s", state.req_id, exc)

    async def cancel_attempt(self, state: RequestState, reason: str = "superseded") -> None:
        """Stop the current attempt only (a continuation is about to replace it)."""
        channel = (
            self._keys.worker_channel(state.owner) if state.owner else self._keys.control_channel(state.model)
        )
        try:
            await self._redis.publish(channel, encode(Cancel(state.req_id, state.attempt, reason)))
        except RedisError as exc:
            log.warning("could not publish cancel for %s: %s", state.req_id, exc)

    def finish(self, state: RequestState) -> None:
        state.done = True
        self._states.pop(state.req_id, None)

    # -- events -----------------------------------------------------------------------------------
    async def _listen(self) -> None:
        channel = self._keys.gateway_channel(self.gateway_id)
        backoff = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                self._subscribed.set()
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._route(message["data"])
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except RedisError as exc:
                log.warning("pub/sub connection lost (%s); resubscribing in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                try:
                    await pubsub.aclose()
                except RedisError:
                    pass

    def _route(self, data: bytes) -> None:
        try:
            batch = decode_events(data)
        except ProtocolError as exc:
            log.warning("ignoring unreadable event batch: %s", exc)
            return
        for event in batch.events:
            state = self._states.get(event.req_id)
            if state is None or event.attempt != state.attempt:
                continue  # finished, cancelled, or a stale attempt
            if isinstance(event, Accepted):
                state.owner = event.worker_id
                state.accepted_at = time.time()
            # Sequence checks (duplicates, gaps) happen where the client is written to.
            state.queue.put_nowait(event)

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups_ready:
            return
        try:
            await self._redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_ready.add(stream)


def _with_budget(params: SamplingParams, remaining: int) -> SamplingParams:
    return msgspec.structs.replace(params, max_new_tokens=max(1, remaining))

