"""Housekeeping a live worker does for the fleet, once per heartbeat.

- Orphaned entries: a worker that died between XREADGROUP and Accepted leaves entries pending in
  the group. Live workers take them over (XPENDING + XCLAIM) once they have been idle longer than
  a heartbeat TTL and their consumer has no heartbeat left: idle alone is not dead, since a busy
  worker may sit on an entry for a long engine step. An entry delivered more than --max-deliveries times is
  dead-lettered: copied to the model's dead-letter stream, acked, and its gateway gets an Error.
- Dead gateways: a request whose gateway has stopped heart-beating has nobody to stream to. It
  keeps running for --gateway-grace-period, so that its client can reconnect through another
  gateway, which adopts it (common/protocol.py Adopt); after that the worker cancels it so its
  blocks return to the pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import redis

from common.protocol import Error, EventBatch, GenerateRequest, ProtocolError, decode_gateway_info, encode
from common.redis_clients import is_cluster, publish
from common.streams import CONSUMER_GROUP, PRIORITY_LEVELS, REQUEST_FIELD, Keys
from worker.intake import read_entry

__all__ = ["Reclaimer", "GatewayWatch"]

log = logging.getLogger("genfleet.worker.reclaim")

K = TypeVar("K")


class Reclaimer:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        model: str,
        worker_id: str,
        min_idle_ms: int,
        max_deliveries: int,
        deliver: Callable[[bytes, GenerateRequest], None],
    ) -> None:
        self._client = client
        self._keys = keys
        # (stream, its partition), highest priority level first, each level over every partition
        self._streams = [(keys.request_stream(model, level, p), p) for level in PRIORITY_LEVELS
                         for p in range(keys.partitions)]
        self._model = model
        self._sharded = is_cluster(client)
        self._worker_id = worker_id
        self._min_idle_ms = min_idle_ms
        self._max_deliveries = max_deliveries
        self._deliver = deliver
        self.reclaimed = 0
        self.dead_lettered = 0

    def run_once(self, budget: int) -> None:
        """Claim up to `budget` orphaned entries, higher priority levels first; dead-letter those
        delivered too often."""
        for stream, partition in self._streams:
            if budget <= 0:
                return
            budget -= self._reclaim(stream, partition, budget)

    def _reclaim(self, stream: str, partition: int, budget: int) -> int:
        pending = self._client.xpending_range(
            stream, CONSUMER_GROUP, min="-", max="+", count=budget, idle=self._min_idle_ms
        )
        pending = [p for p in pending if self._owner_is_dead(p["consumer"])]
        if not pending:
            return 0
        claimed = self._client.xclaim(
            stream, CONSUMER_GROUP, self._worker_id, self._min_idle_ms,
            [p["message_id"] for p in pending],
        )
        deliveries = {p["message_id"]: int(p["times_delivered"]) + 1 for p in pending}
        for entry_id, fields in claimed:
            try:
                raw, request = read_entry(fields)
            except ProtocolError as exc:
                log.error("acking unreadable orphan %r: %s", entry_id, exc)
                self._client.xack(stream, CONSUMER_GROUP, entry_id)
                continue
            if deliveries.get(entry_id, 1) > self._max_deliveries:
                self._dead_letter(stream, partition, entry_id, raw, request, deliveries[entry_id])
                continue
            self.reclaimed += 1
            log.info("reclaimed orphaned request %s (delivery %d)", request.req_id, deliveries.get(entry_id, 1))
            self._deliver(entry_id, request)
        return len(claimed)

    def _owner_is_dead(self, consumer: bytes | str) -> bool:
        name = consumer.decode() if isinstance(consumer, bytes) else consumer
        if name == self._worker_id:
            return False  # ours: in the handover queue, acked within a step
        return not self._client.exists(self._keys.worker_heartbeat(name))

    def _dead_letter(self, stream: str, partition: int, entry_id: bytes, raw: bytes, request: GenerateRequest,
                     times: int) -> None:
        self.dead_lettered += 1
        log.error("dead-lettering %s after %d deliveries", request.req_id, times)
        error = Error(
            request.req_id,
            request.attempt,
            "dead_letter",
            f"Request failed during generation: delivered {times} times without being served",
        )
        pipe = self._client.pipeline(transaction=False)
        pipe.xadd(self._keys.dead_letter_stream(self._model, partition), {REQUEST_FIELD: raw, b"deliveries": str(times)},
                  maxlen=10_000, approximate=True)
        pipe.xack(stream, CONSUMER_GROUP, entry_id)
        publish(pipe, self._keys.gateway_channel(request.gateway_id), encode(EventBatch(self._worker_id, 0, [error])),
                self._sharded)
        pipe.execute()


class GatewayWatch:
    """Tracks the gateways this worker streams to; reports the requests whose gateway went away at
    least `grace` seconds ago: its heartbeat expired, or it restarted under the same id (a new
    `started_at`) after the request became its own — a restarted gateway knows nothing of it
    unless it adopted it since.

    A gateway counts as dead only after its heartbeat was seen once and then expired, so a
    request never dies because its gateway's first heartbeat has not landed yet.
    """

    def __init__(self, client: redis.Redis, keys: Keys, grace: float = 0.0) -> None:
        self._client = client
        self._keys = keys
        self._grace = grace
        self._seen: set[str] = set()
        self._gone_since: dict[str, float] = {}  # gateway -> when its heartbeat was first missed
        # gateway -> (its process's started_at, when this worker last saw it): a new started_at
        # is a restart, dated by when the old process was last seen, in this worker's clock (the
        # gateway's clock may differ from ours).
        self._process: dict[str, tuple[float, float]] = {}
        self._replaced_at: dict[str, float] = {}  # gateway -> when its old process was last seen

    def orphans(self, owners: Mapping[K, tuple[str, float]]) -> list[K]:
        """Of `owners` (request -> its gateway and since when), those to cancel now."""
        ids = sorted({gid for gid, _ in owners.values()})
        if not ids:
            return []
        pipe = self._client.pipeline(transaction=False)  # not MGET: in a Redis Cluster the keys' slots differ
        for gid in ids:
            pipe.get(self._keys.gateway_heartbeat(gid))
        heartbeats = dict(zip(ids, pipe.execute()))
        now = time.time()
        for gid, raw in heartbeats.items():
            if raw is None:
                if gid in self._seen:
                    self._gone_since.setdefault(gid, now)
                continue
            self._seen.add(gid)
            self._gone_since.pop(gid, None)
            try:
                started_at = decode_gateway_info(raw).started_at
            except ProtocolError:
                continue
            previous = self._process.get(gid)
            if previous is not None and previous[0] != started_at:
                self._replaced_at[gid] = previous[1]
            self._process[gid] = (started_at, now)
        orphans = []
        for key, (gid, since) in owners.items():
            gone_at = self._gone_since.get(gid)
            if gone_at is None and since < self._replaced_at.get(gid, 0.0):
                gone_at = self._replaced_at[gid]  # the process it belonged to was replaced
            if gone_at is not None and now - gone_at >= self._grace:
                orphans.append(key)
        return orphans
