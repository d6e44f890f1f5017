"""One request's life in the gateway: submit, relay events, fail over, time out, cancel.

`run` yields the request's Token events in bursts and leaves its Finish on the request state; it
raises GenfleetError for an Error event or a passed deadline. When the owner worker's heartbeat
disappears, or a seq gap shows that events were lost, it re-enqueues a continuation — attempt + 1,
with every token the client has already been sent appended to the prompt — and the client's
stream goes on without a gap or a duplicate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import GATEWAY_GONE, GenfleetError
from common.protocol import Error, Finish, Token
from gateway.fleet import FleetView
from gateway.metrics import GatewayMetrics
from gateway.queue_client import QueueClient, QueueFull, RequestState

__all__ = ["Relay"]

log = logging.getLogger("genfleet.gateway.generation")

_POLL = 0.25  # seconds between liveness checks while waiting for events


@dataclass
class Relay:
    queue_client: QueueClient
    fleet: FleetView
    metrics: GatewayMetrics
    max_attempts: int = 5
    # A queued request with no worker serving its model at all fails after this many heartbeat
    # TTLs rather than waiting forever (there may be no --request-timeout).
    no_worker_ttls: float = 10.0

    async def submit(self, state: RequestState) -> None:
        try:
            try:
                await self.queue_client.submit(state)
            except RedisTimeoutError as exc:
                # A gateway starved of CPU can pass the socket timeout while Redis's reply already
                # waits in the socket: the entry may well be queued. Queue it again as the next
                # attempt, which makes any copy of this one stale; a second timeout is Redis's.
                log.warning("request %s: enqueue timed out (%s); queueing it as attempt %d",
                            state.req_id, exc, state.attempt + 1)
                await self.queue_client.cancel_attempt(state)
                state.attempt += 1
                await self.queue_client.submit(state)
        except QueueFull as exc:
            raise GenfleetError("overloaded", f"Model is overloaded: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise GenfleetError("unavailable", f"Request queue unavailable: {exc}") from exc

    async def run(self, state: RequestState, keep_alive: float = 0.0) -> AsyncIterator[list[Token]]:
        """Yield the request's tokens a burst at a time: every event queued when the relay wakes.

        Ends after the Finish, which it leaves in `state.finish`. With `keep_alive` > 0 it yields
        an empty burst after that many seconds without one, so a stream can write a keep-alive
        without a timer of its own.
        """
        missing_owner_since = 0.0
        no_worker_since = 0.0
        last_yield = time.monotonic()
        inbox = state.queue
        while True:
            # Events arrive in bursts (one message per worker step): one wake-up takes them all.
            if not await inbox.wait(_POLL):
                if keep_alive and time.monotonic() - last_yield >= keep_alive:
                    last_yield = time.monotonic()
                    yield []
                if state.deadline and time.time() > state.deadline:
                    raise GenfleetError("timeout", "Request deadline exceeded") from None
                if state.owner is not None and not self.fleet.is_alive(state.owner):
                    # One missed refresh is not death: the heartbeat key must stay gone a whole TTL.
                    missing_owner_since = missing_owner_since or time.monotonic()
                    if time.monotonic() - missing_owner_since >= self.fleet.ttl:
                        await self._continue(state, f"worker {state.owner} stopped heart-beating")
                        missing_owner_since = 0.0
                else:
                    missing_owner_since = 0.0
                fleet = self.fleet.state
                if state.owner is None and fleet.redis_ok and not fleet.serving:
                    no_worker_since = no_worker_since or time.monotonic()
                    if time.monotonic() - no_worker_since >= self.no_worker_ttls * self.fleet.ttl:
                        raise GenfleetError("unavailable", "No worker is serving this model") from None
                else:
                    no_worker_since = 0.0
                continue
            burst: list[Token] = []
            relayed = state.relayed_ids
            for event in inbox.drain():
                if isinstance(event, Token):
                    expected = len(relayed)
                    if event.seq < expected:
                        continue  # already relayed (a duplicate, or a continuation's overlap)
                    if event.seq > expected:
                        # The tokens before the gap reach the client first (also when no attempt
                        # is left); the rest of this burst belongs to the attempt being replaced.
                        if burst:
                            yield burst
                            burst = []
                        await self._continue(state, f"events lost before seq {event.seq}")
                        break
                    relayed.append(event.id)
                    burst.append(event)
                elif isinstance(event, Finish):
                    if event.seq > len(relayed):
                        if burst:
                            yield burst
                            burst = []
                        await self._continue(state, "events lost before the finish")
                        break
                    state.finish = event
                    if burst:
                        yield burst
                    return
                elif isinstance(event, Error):
                    if burst:
                        yield burst  # the tokens before the error reach the client first
                        burst = []
                    if event.error_type == GATEWAY_GONE:
                        # Taken for dead while it was only stalled: this gateway carries on.
                        await self._continue(state, f"worker {state.owner} took this gateway for dead")
                        break
                    raise GenfleetError(event.error_type, event.message)
                # Accepted: the router has already recorded the owner.
            if burst:
                last_yield = time.monotonic()
                yield burst

    async def _continue(self, state: RequestState, why: str) -> None:
        if state.attempt + 1 >= self.max_attempts:
            raise GenfleetError("generation", f"Request failed during generation: {why} (attempt {state.attempt})")
        log.warning("request %s: %s; re-enqueueing attempt %d", state.req_id, why, state.attempt + 1)
        old_owner = state.owner
        await self.queue_client.cancel_attempt(state)
        state.attempt += 1
        state.owner = None
        state.queue.clear()  # events of the old attempt still queued locally
        self.metrics.counters.inc("genfleet_request_continuations")
        await self.submit(state)
        log.info("request %s continues as attempt %d (was on %s)", state.req_id, state.attempt, old_owner)
