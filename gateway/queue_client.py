"""The gateway's side of Redis, transport only: XADD, one pub/sub subscription, cancel and adopt
publishes, and the requests' journals (common/streams.py `claim`, `journal`).

Every event batch arrives on this gateway's one channel (a sharded channel in a Redis Cluster);
each event is handed to the inbox registered under its request id. What the events mean (attempts, owners, seq checks) is
gateway/lifecycle.py's business.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from common.log import request_id_var
from common.protocol import (
    Adopt,
    Cancel,
    Event,
    EventBatch,
    GenerateRequest,
    JournalEntry,
    LoadAdapter,
    ProtocolError,
    Token,
    UnloadAdapter,
    decode_events,
    decode_journal_entry,
    decode_request,
    encode,
)
from common.redis_clients import anext_message, asubscribe, is_cluster, is_data, is_subscribe, publish
from common.streams import CONSUMER_GROUP, REQUEST_FIELD, Keys
from gateway.inbox import Inbox

__all__ = ["QueueClient", "QueueFull"]

log = logging.getLogger("genfleet.gateway.queue")


class QueueFull(RuntimeError):
    pass


class QueueClient:
    def __init__(self, client: aioredis.Redis, keys: Keys, gateway_id: str, max_queue_length: int,
                 journal_ttl: float = 60.0) -> None:
        self._redis = client
        self._keys = keys
        self.gateway_id = gateway_id
        self._max_queue_length = max_queue_length
        self.journal_ttl = journal_ttl
        self._ttl_ms = max(1, int(journal_ttl * 1000))
        self._inboxes: dict[str, Inbox[Event]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._groups_ready: set[str] = set()
        self._sharded = is_cluster(client)
        # Counts the subscriptions Redis confirmed: a request opened under an earlier one may have
        # lost events published while the connection was down (pub/sub keeps nothing for us).
        # Confirmations, not our calls, because redis-py resubscribes by itself when it reconnects
        # a connection, and a cluster's pub/sub moves a channel to its slot's new primary.
        self.subscriptions = 0

    @property
    def in_flight(self) -> int:
        return len(self._inboxes)

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

    @staticmethod
    def request_id(index: int | None = None) -> str:
        """The fleet id of the HTTP request's run `index` (None: its only run): the HTTP request's
        id (x-request-id or Idempotency-Key), so gateway and worker logs match and a retry with
        the same id names the same run; `.index` for each run of a fan-out (best_of, n)."""
        base = request_id_var.get() or uuid.uuid4().hex
        return base if index is None else f"{base}.{index}"

    def is_open(self, req_id: str) -> bool:
        return req_id in self._inboxes

    def open(self, req_id: str) -> tuple[str, Inbox[Event]]:
        """The inbox `req_id`'s events will be routed to (until `close`), under a suffixed id
        when this gateway already relays one of that id."""
        base = req_id
        while req_id in self._inboxes:
            req_id = f"{base}-{uuid.uuid4().hex[:6]}"
        inbox: Inbox[Event] = Inbox()
        self._inboxes[req_id] = inbox
        return req_id, inbox

    def close(self, req_id: str) -> None:
        self._inboxes.pop(req_id, None)

    async def claim(self, msg: GenerateRequest) -> GenerateRequest | None:
        """Make `msg` (attempt 0) the request of its id fleet-wide: None when it now is, else the
        request that already holds the id (running, or ended within the journal's TTL)."""
        previous = await self._redis.set(self._keys.claim(msg.req_id), encode(msg), nx=True, get=True, px=self._ttl_ms)
        return None if previous is None else decode_request(previous)

    async def claimed(self, req_id: str) -> GenerateRequest | None:
        raw = await self._redis.get(self._keys.claim(req_id))
        return None if raw is None else decode_request(raw)

    async def release(self, req_id: str) -> None:
        """Give up a claim whose request was never queued (refused before the XADD)."""
        await self._redis.delete(self._keys.claim(req_id))

    async def enqueue(self, msg: GenerateRequest, relayed: Sequence[Token] = ()) -> bytes | str:
        """XADD one attempt to its priority's stream; the entry id. Raises QueueFull, before
        queueing, when that stream is over the bound (a flood of one level never refuses another).
        A continuation (attempt > 0) is written to the request's journal first, after the tokens
        its client has been sent (`relayed`): a worker journals a running request only every
        --checkpoint-interval (worker/checkpoint.py), so one that died may not have written the
        last of them, and the journal would hold a hole before the continuation's tokens."""
        stream = self._keys.stream_of(msg.model, msg.req_id, msg.priority)
        await self._ensure_group(stream)
        # Workers delete entries when they accept them, so XLEN is the unserved backlog; each of
        # a model's partitions holds its share of the bound.
        if await self._redis.xlen(stream) >= -(-self._max_queue_length // self._keys.partitions):
            raise QueueFull(f"the request queue holds {self._max_queue_length} entries")
        payload = encode(msg)
        if msg.attempt == 0:
            entry_id: bytes | str = await self._redis.xadd(stream, {REQUEST_FIELD: payload})
            return entry_id
        pipe = self._redis.pipeline(transaction=False)
        if relayed:  # a replay drops those it already holds (gateway/journal.py)
            pipe.rpush(self._keys.journal(msg.req_id), encode(EventBatch(f"gateway:{self.gateway_id}", 0, list(relayed))))
        self._journal_on(pipe, msg.req_id, payload)
        pipe.xadd(stream, {REQUEST_FIELD: payload})
        return (await pipe.execute())[-1]  # type: ignore[no-any-return]

    async def journal(self, req_id: str, start: int = 0) -> list[JournalEntry]:
        """The request's journal from entry `start` on (unreadable entries skipped, logged)."""
        entries = []
        for raw in await self._redis.lrange(self._keys.journal(req_id), start, -1):
            try:
                entries.append(decode_journal_entry(raw))
            except ProtocolError as exc:
                log.warning("skipping an unreadable journal entry of %s: %s", req_id, exc)
                entries.append(Cancel(req_id, -2, "unreadable"))  # keeps the count of entries read
        return entries

    async def append_journal(self, req_id: str, msg: Cancel | Adopt) -> None:
        pipe = self._redis.pipeline(transaction=False)
        self._journal_on(pipe, req_id, encode(msg))
        await pipe.execute()

    async def refresh_journal(self, req_id: str) -> None:
        """Keep a request's claim and journal while no worker writes them (it is queued)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.pexpire(self._keys.claim(req_id), self._ttl_ms)
        pipe.pexpire(self._keys.journal(req_id), self._ttl_ms)
        await pipe.execute()

    def _journal_on(self, pipe: aioredis.client.Pipeline, req_id: str, payload: bytes) -> None:
        pipe.rpush(self._keys.journal(req_id), payload)
        pipe.pexpire(self._keys.journal(req_id), self._ttl_ms)
        pipe.pexpire(self._keys.claim(req_id), self._ttl_ms)

    async def gateway_alive(self, gateway_id: str) -> bool:
        return bool(await self._redis.exists(self._keys.gateway_heartbeat(gateway_id)))

    async def publish_adopt(self, model: str, owner: str | None, adopt: Adopt) -> None:
        """To the owner's channel, or to every worker of the model while nobody owns it yet."""
        channel = self._keys.worker_channel(owner) if owner else self._keys.control_channel(model)
        await publish(self._redis, channel, encode(adopt), self._sharded)

    async def publish_cancel(self, model: str, owner: str | None, cancel: Cancel) -> None:
        """To the owner's channel, or to every worker of the model while nobody owns it yet."""
        channel = self._keys.worker_channel(owner) if owner else self._keys.control_channel(model)
        try:
            await publish(self._redis, channel, encode(cancel), self._sharded)
        except RedisError as exc:
            log.warning("could not publish cancel for %s: %s", cancel.req_id, exc)

    async def publish_to_workers(self, model: str, message: LoadAdapter | UnloadAdapter) -> None:
        """To every worker of the model (its control channel)."""
        await publish(self._redis, self._keys.control_channel(model), encode(message), self._sharded)

    async def publish_to_gateway(self, gateway_id: str, events: list[Event]) -> None:
        """Events for requests another gateway relays (POST /cancel/{id} tells it to end one)."""
        await publish(self._redis, self._keys.gateway_channel(gateway_id),
                      encode(EventBatch(f"gateway:{self.gateway_id}", 0, events)), self._sharded)

    async def delete_entry(self, model: str, req_id: str, priority: int, entry_id: bytes | str) -> None:
        try:
            await self._redis.xdel(self._keys.stream_of(model, req_id, priority), entry_id)
        except RedisError as exc:
            log.warning("could not delete queued entry %r: %s", entry_id, exc)

    async def _listen(self) -> None:
        channel = self._keys.gateway_channel(self.gateway_id)
        backoff = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await asubscribe(pubsub, [channel], self._sharded)
                while True:
                    message = await anext_message(pubsub, 1.0, self._sharded)
                    if message is None:
                        continue
                    if is_data(message):
                        self._route(message["data"])
                    elif is_subscribe(message):
                        self.subscriptions += 1
                        self._subscribed.set()
                        backoff = 0.1
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
        inboxes = self._inboxes
        for event in batch.events:
            inbox = inboxes.get(event.req_id)
            if inbox is not None:  # else finished or cancelled
                inbox.put_nowait(event)

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups_ready:
            return
        try:
            await self._redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_ready.add(stream)
