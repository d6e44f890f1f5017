"""Per-step checkpoints of running requests: each request's events of a publish round appended to
its journal ({p}:log:{req_id}), in the pipeline that publishes them.

One RPUSH per request per round (an EventBatch of that request's events), never one per token;
the journal's TTL is refreshed when a request first writes, when it ends, and every third of the
TTL in between, so most rounds add no EXPIRE. Any gateway can replay a journal
(gateway/journal.py): a client whose gateway died resumes its stream elsewhere, and a retry with
the same request id gets the same answer without a second generation.
"""

from __future__ import annotations

import time
from collections import defaultdict

from redis.client import Pipeline

from common.protocol import Error, Event, EventBatch, Finish, encode
from common.streams import Keys

__all__ = ["Checkpointer"]


class Checkpointer:
    def __init__(self, keys: Keys, worker_id: str, ttl: float) -> None:
        self._keys = keys
        self._worker_id = worker_id
        self._ttl_ms = max(1, int(ttl * 1000))
        self._refresh_every = ttl / 3
        self._refreshed: dict[str, float] = {}  # req_id -> monotonic time of its last EXPIRE
        self._pruned_at = time.monotonic()

    def add(self, pipe: Pipeline, step: int, per_gateway: dict[str, list[Event]]) -> None:
        """Queue on `pipe` the journal writes of this round's events (before its publishes, so a
        gateway that receives an event finds everything before it in the journal)."""
        by_request: dict[str, list[Event]] = defaultdict(list)
        for events in per_gateway.values():
            for event in events:
                by_request[event.req_id].append(event)
        now = time.monotonic()
        refreshed = self._refreshed
        for req_id, events in by_request.items():
            key = self._keys.journal(req_id)
            pipe.rpush(key, encode(EventBatch(self._worker_id, step, events)))
            ended = isinstance(events[-1], (Finish, Error))
            last = refreshed.get(req_id)
            if last is None or ended or now - last >= self._refresh_every:
                pipe.pexpire(key, self._ttl_ms)
                pipe.pexpire(self._keys.claim(req_id), self._ttl_ms)
                refreshed[req_id] = now
            if ended:
                refreshed.pop(req_id, None)
        if now - self._pruned_at > self._refresh_every:
            # Requests cancelled without a last event leave their entry here.
            self._pruned_at = now
            for req_id in [r for r, t in refreshed.items() if now - t > 3 * self._refresh_every]:
                del refreshed[req_id]

    @property
    def tracked(self) -> int:
        return len(self._refreshed)
