"""Checkpoints of running requests: each request's events appended to its journal
({p}:log:{req_id}) in the pipeline that publishes them, a flush at a time.

A request's events wait here until a flush, which writes one RPUSH per request (an EventBatch of
every event since its last flush): for all running requests together every `interval` seconds
(`--checkpoint-interval`), and for one request at once when it is accepted (its owner known to
every reader), ends (a Finish or an Error), is adopted by another gateway, or is dropped. So the rounds between two flushes write no journal at
all, and a request costs one RPUSH per interval instead of one per step. The journal's TTL is
refreshed when a request first writes, when it ends, and every third of the TTL in between.

What a reader may miss is the last interval of a running request, and each reader that needs the
journal whole gets it whole:
- a gateway adopting a request (gateway/resume.py) sends an Adopt; the owner flushes the request
  in the pipeline that publishes its Accepted to the adopter, so the journal holds everything
  before that Accepted and the adopter's channel everything after;
- an ended request's journal is whole: its last event flushes it;
- a worker that dies loses what it had not flushed, but its gateway relayed those tokens and
  journals them with the continuation it queues (gateway/queue_client.py `enqueue`);
- a follower (a retry while the first call runs) reads the journal as it grows: a flush at a time.
"""

from __future__ import annotations

import time

from redis.client import Pipeline

from common.protocol import Error, Event, EventBatch, Finish, encode
from common.streams import Keys

__all__ = ["Checkpointer"]


class _Pending:
    __slots__ = ("events", "step")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.step = 0  # the last engine step that added to `events`: the batch's step


class Checkpointer:
    def __init__(self, keys: Keys, worker_id: str, ttl: float, interval: float = 1.0) -> None:
        self._keys = keys
        self._worker_id = worker_id
        self._ttl_ms = max(1, int(ttl * 1000))
        self._refresh_every = ttl / 3
        self._interval = min(interval, self._refresh_every)  # a running request's TTL never lapses
        self._pending: dict[str, _Pending] = {}  # req_id -> events not in its journal yet
        self._urgent: set[str] = set()  # flushed with the next write whatever the time
        self._flushed_at = time.monotonic()
        self._refreshed: dict[str, float] = {}  # req_id -> monotonic time of its last EXPIRE
        self._writing: dict[str, _Pending] = {}  # what the pipeline being sent holds

    def add(self, step: int, per_gateway: dict[str, list[Event]]) -> None:
        """Keep a round's new events until their request's next flush."""
        pending = self._pending
        for events in per_gateway.values():
            for event in events:
                entry = pending.get(event.req_id)
                if entry is None:
                    entry = pending[event.req_id] = _Pending()
                entry.events.append(event)
                if step:
                    entry.step = step
                if isinstance(event, (Finish, Error)):
                    self._urgent.add(event.req_id)

    def urge(self, req_id: str | None = None) -> None:
        """Flush `req_id` with the next write (adopted: the adopter reads the journal next;
        dropped), or every request (None: the worker stops)."""
        # Marked even with nothing pending: events of this very round join it before the write.
        self._urgent.update(self._pending if req_id is None else (req_id,))

    @property
    def urgent(self) -> bool:
        """Whether the next write has something to write whatever the time."""
        return bool(self._urgent)

    def write(self, pipe: Pipeline) -> None:
        """Queue on `pipe` the journal writes that are due (before the round's publishes, so a
        gateway that receives an adopted request's Accepted finds everything before it)."""
        now = time.monotonic()
        refreshed = self._refreshed
        if now - self._flushed_at >= self._interval:
            self._flushed_at = now
            due = list(self._pending)
            # A request dropped without a last event leaves its entry here.
            for req_id in [r for r, t in refreshed.items() if now - t > 3 * self._refresh_every]:
                del refreshed[req_id]
        else:
            due = [r for r in self._urgent if r in self._pending]
        self._urgent.clear()
        for req_id in due:
            entry = self._writing[req_id] = self._pending.pop(req_id)
            key = self._keys.journal(req_id)
            pipe.rpush(key, encode(EventBatch(self._worker_id, entry.step, entry.events)))
            ended = isinstance(entry.events[-1], (Finish, Error))
            last = refreshed.get(req_id)
            if last is None or ended or now - last >= self._refresh_every:
                pipe.pexpire(key, self._ttl_ms)
                pipe.pexpire(self._keys.claim(req_id), self._ttl_ms)
                refreshed[req_id] = now
            if ended:
                refreshed.pop(req_id, None)

    def written(self, ok: bool) -> None:
        """The pipeline of the last `write` was sent, or failed: then its writes are due again
        (ahead of what came since), with the next write."""
        if not ok:
            for req_id, entry in self._writing.items():
                later = self._pending.get(req_id)
                if later is not None:
                    entry.events += later.events
                    entry.step = later.step or entry.step
                self._pending[req_id] = entry
                self._urgent.add(req_id)
        self._writing = {}
