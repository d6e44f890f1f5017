"""The gateway's view of the fleet, refreshed once per heartbeat interval.

The default model's view publishes this gateway's own heartbeat (workers cancel the requests of
gateways that vanish). Each view reads every worker heartbeat (found through the fleet's model
registry and each model's worker registry, so no KEYS or SCAN, which would see one shard of a
cluster), keeps those of its model (and the names of every model the fleet serves, for
gateway/models.py), and measures its model's streams' backlog. /health,
/info, /metrics and the capacity check read the cached view; nothing on the request path waits
for a refresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.protocol import GatewayInfo, ProtocolError, WorkerInfo, decode_worker_info, encode
from common.streams import CONSUMER_GROUP, PRIORITY_LEVELS, Keys
from gateway.validation import Limits

__all__ = ["FleetView", "FleetState"]

log = logging.getLogger("genfleet.gateway.fleet")


@dataclass(frozen=True)
class FleetState:
    redis_ok: bool = False
    workers: tuple[WorkerInfo, ...] = ()
    queue_size: int = 0
    refreshed_at: float = 0.0
    pending: int = 0  # delivered to a worker, not yet acknowledged
    fleet_models: frozenset[str] = frozenset()  # every model a live, serving worker of the fleet serves
    queue_by_priority: dict[int, int] = field(default_factory=dict)  # queue_size per priority level
    # LoRA adapter id -> the model whose every serving worker holds it (the fleet's, for OpenAI's `model`)
    fleet_adapters: dict[str, str] = field(default_factory=dict)

    @property
    def serving(self) -> tuple[WorkerInfo, ...]:
        return tuple(w for w in self.workers if not w.draining)

    @property
    def adapters(self) -> frozenset[str]:
        """The LoRA adapters every serving worker of the model holds. All of them read one stream,
        so a request of an adapter only some hold could reach one without it: those are not served."""
        return _held_by_all(self.serving)

    @property
    def healthy(self) -> bool:
        return self.redis_ok and bool(self.serving)

    def limits(self, own: Limits) -> Limits:
        """`own`, lowered to the longest sequence every serving worker takes (its heartbeat's max_total_tokens)."""
        served = min((w.max_total_tokens for w in self.serving), default=own.max_total_tokens)
        if served >= own.max_total_tokens:
            return own
        return Limits(max(1, min(own.max_input_tokens, served - 1)), served)

    @property
    def max_capacity_tokens(self) -> int | None:
        caps = [w.capacity_tokens for w in self.serving]
        return max(caps) if caps else None


@dataclass
class FleetView:
    client: aioredis.Redis
    keys: Keys
    model: str
    gateway_id: str
    interval: float
    ttl: float
    in_flight: Callable[[], int] = lambda: 0
    publishes_heartbeat: bool = True  # one view per gateway does (the default model's)
    state: FleetState = field(default_factory=FleetState)
    started_at: float = field(default_factory=time.time)
    _task: asyncio.Task[None] | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _timing_out_since: float = 0.0  # monotonic time of the first of the refreshes timing out in a row

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="fleet-view")

    async def stop(self) -> None:
        if self._task is not None:
            # Let a refresh in progress finish instead of cancelling it inside a Redis call (which
            # can leave the cancellation pending on the connection for seconds).
            self._stopping.set()
            done, _ = await asyncio.wait({self._task}, timeout=2 * self.interval + 1)
            if not done:
                self._task.cancel()
        if not self.publishes_heartbeat:
            return
        try:
            await self.client.delete(self.keys.gateway_heartbeat(self.gateway_id))
        except RedisError:
            pass

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self.interval)
            except asyncio.TimeoutError:
                await self.refresh()

    async def refresh(self) -> None:
        try:
            if self.publishes_heartbeat:
                info = GatewayInfo(self.gateway_id, int(self.in_flight()), self.started_at, time.time())
                await self.client.set(self.keys.gateway_heartbeat(self.gateway_id), encode(info),
                                      px=int(self.ttl * 1000))
            raw = await self._heartbeats()
            workers = []
            models = set()
            by_model: dict[str, list[WorkerInfo]] = {}
            for value in raw:
                if value is None:
                    continue
                try:
                    w = decode_worker_info(value)
                except ProtocolError:
                    continue
                if not w.draining:
                    models.add(w.model)
                    by_model.setdefault(w.model, []).append(w)
                if w.model == self.model:
                    workers.append(w)
            backlog, pending = await self._backlog()
            # An id two models both serve goes to the first in name order (documented in docs/api.md).
            adapters = {a: m for m in sorted(by_model, reverse=True) for a in _held_by_all(by_model[m])}
            self.state = FleetState(True, tuple(sorted(workers, key=lambda w: w.worker_id)), sum(backlog.values()),
                                    time.time(), pending, frozenset(models), backlog, adapters)
            self._timing_out_since = 0.0
        except RedisTimeoutError as exc:
            # A timeout may be this process stalled past the socket timeout (starved of CPU) with
            # Redis's reply waiting: the last view stands until refreshes have timed out for a TTL.
            now = time.monotonic()
            self._timing_out_since = self._timing_out_since or now
            if now - self._timing_out_since < self.ttl:
                log.info("fleet refresh timed out (%s); keeping the last view", exc)
                return
            self._unreachable(exc)
        except (RedisError, OSError) as exc:
            self._unreachable(exc)

    async def _backlog(self) -> tuple[dict[int, int], int]:
        """Entries waiting in each priority level's streams (every partition), and those delivered but
        not acknowledged."""
        pipe = self.client.pipeline(transaction=False)
        for stream in self.keys.all_request_streams(self.model):
            pipe.xlen(stream)
            pipe.xpending(stream, CONSUMER_GROUP)
        replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and not isinstance(reply, ResponseError):
                raise reply  # a ResponseError is a stream or group not made yet
        backlog: dict[int, int] = {}
        for level, n in zip(PRIORITY_LEVELS * self.keys.partitions, replies[::2]):
            if isinstance(n, int):
                backlog[level] = backlog.get(level, 0) + n
        pending = sum(int(r["pending"]) for r in replies[1::2] if isinstance(r, dict))
        return backlog, pending

    async def _heartbeats(self) -> list[bytes | None]:
        """Every worker heartbeat of the fleet: the models that registered, their workers, their keys."""
        # Names silent for far longer than a TTL are left by workers that died without unregistering.
        stale = time.time() - max(60.0, 10 * self.ttl)
        models = await self._registered(self.keys.model_registry(), stale)
        pipe = self.client.pipeline(transaction=False)  # in a cluster: one round trip per shard
        for model in models:
            pipe.zremrangebyscore(self.keys.worker_registry(model), "-inf", stale)
            pipe.zrange(self.keys.worker_registry(model), 0, -1)
        worker_ids = [w for ids in (await pipe.execute())[1::2] for w in ids]
        if not worker_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for wid in worker_ids:
            pipe.get(self.keys.worker_heartbeat(_text(wid)))
        return list(await pipe.execute())

    async def _registered(self, registry: str, stale: float) -> list[str]:
        await self.client.zremrangebyscore(registry, "-inf", stale)
        return [_text(name) for name in await self.client.zrange(registry, 0, -1)]

    def _unreachable(self, exc: Exception) -> None:
        if self.state.redis_ok:
            log.warning("Redis unreachable: %s", exc)
        self.state = FleetState(False, (), 0, time.time())

    def is_alive(self, worker_id: str) -> bool:
        return any(w.worker_id == worker_id for w in self.state.workers)


def _held_by_all(workers: tuple[WorkerInfo, ...] | list[WorkerInfo]) -> frozenset[str]:
    if not workers:
        return frozenset()
    return frozenset.intersection(*(frozenset(w.adapters) for w in workers))


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name
