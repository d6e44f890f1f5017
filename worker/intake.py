"""The worker's intake: XREADGROUP only as many requests as the engine can admit, and cancels.

Two threads, neither of which ever blocks the engine loop:
- the reader takes at most `budget()` entries per read from the model's streams (so a busy worker
  leaves work for idle ones), from the highest priority level down: a level's entries are read
  only while every higher level is empty. It hands them over with their stream entry ids; the
  output thread XACKs each entry together with its Accepted event. With --stream-partitions N it
  reads the model's N partitions in turn, one per read (a partition's levels share a slot, so one
  read may span them; a cluster refuses a read across slots), and blocks 1/N of the poll interval
  on each, so an idle worker sends Redis the same reads per second;
- the listener receives Cancel and Adopt messages on this worker's channel and the model's control
  channel (sharded channels in a cluster).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import redis

from common.protocol import Control, GenerateRequest, ProtocolError, decode_control, decode_request
from common.redis_clients import is_cluster, is_data, next_message, subscribe
from common.streams import CONSUMER_GROUP, REQUEST_FIELD, Keys

__all__ = ["Intake", "ensure_group", "read_entry"]

log = logging.getLogger("genfleet.worker.intake")

_READ_BLOCK_MS = 200
_RETRY_SECONDS = 0.5


def ensure_group(client: redis.Redis, stream: str) -> None:
    """Create the consumer group (and the stream) unless it exists; safe to race."""
    try:
        client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read_entry(fields: dict[bytes, bytes] | None) -> tuple[bytes, GenerateRequest]:
    """A stream entry's raw payload and decoded request; ProtocolError when it has neither."""
    raw = (fields or {}).get(REQUEST_FIELD)
    if raw is None:
        raise ProtocolError("entry has no request field (deleted or trimmed)")
    return raw, decode_request(raw)


class Intake:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        model: str,
        worker_id: str,
        budget: Callable[[], int],
        on_request: Callable[[bytes, GenerateRequest], None],
        on_control: Callable[[Control], None],
        on_bad_entry: Callable[[str, bytes], None],
    ) -> None:
        self._client = client
        self._keys = keys
        # Each partition's streams, highest priority first.
        self._partitions = [keys.request_streams(model, p) for p in range(keys.partitions)]
        self._streams = self._partitions[0]  # the partition this read takes
        # Workers start their turn at different partitions, so N partitions see N readers at once.
        self._turn = zlib.crc32(worker_id.encode()) % keys.partitions
        self._block_ms = max(20, _READ_BLOCK_MS // keys.partitions)
        self._model = model
        self._worker_id = worker_id
        self._budget = budget
        self._on_request = on_request
        self._on_control = on_control
        self._on_bad_entry = on_bad_entry
        self._reading = threading.Event()
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._threads = [
            threading.Thread(target=self._read_loop, name="intake", daemon=True),
            threading.Thread(target=self._listen_loop, name="cancels", daemon=True),
        ]

    def start(self) -> None:
        for streams in self._partitions:
            for stream in streams:
                ensure_group(self._client, stream)
        self._reading.set()
        for t in self._threads:
            t.start()

    def wake(self) -> None:
        """The engine freed capacity: read again without waiting for the poll interval."""
        self._wake.set()

    def stop_reading(self) -> None:
        self._reading.clear()

    def stop(self, timeout: float = 2.0) -> None:
        self._reading.clear()
        self._stopped.set()
        self._wake.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout)

    def _read_loop(self) -> None:
        while not self._stopped.is_set():
            if not self._reading.is_set():
                self._stopped.wait(0.1)
                continue
            count = self._budget()
            if count <= 0:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            self._streams = self._partitions[self._turn]
            self._turn = (self._turn + 1) % len(self._partitions)
            try:
                self._read(count)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted without persistence
                    log.warning("consumer group missing; recreating the groups of %s", self._model)
                    for stream in self._streams:
                        self._safe(functools.partial(ensure_group, self._client, stream))
                else:
                    log.warning("XREADGROUP failed: %s", exc)
                self._stopped.wait(_RETRY_SECONDS)
            except redis.RedisError as exc:
                log.warning("Redis unavailable for intake (%s); retrying", exc)
                self._stopped.wait(_RETRY_SECONDS)

    def _read(self, count: int) -> None:
        """Up to `count` entries, higher levels first; blocks a while only when every level is empty."""
        left = count
        for stream in self._streams:
            reply = self._client.xreadgroup(CONSUMER_GROUP, self._worker_id, {stream: ">"}, count=left)
            left -= self._deliver_reply(reply)
            if left <= 0:
                return
        if left < count:
            return
        # Nothing anywhere: wait on every level at once (a reply may carry entries of several).
        reply = self._client.xreadgroup(CONSUMER_GROUP, self._worker_id, dict.fromkeys(self._streams, ">"),
                                        count=count, block=self._block_ms)
        order = {stream: i for i, stream in enumerate(self._streams)}
        self._deliver_reply(sorted(reply or [], key=lambda r: order[_name(r[0])]))

    def _deliver_reply(self, reply: list[Any] | None) -> int:
        delivered = 0
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                self._deliver(_name(stream), entry_id, fields)
                delivered += 1
        return delivered

    def _deliver(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        try:
            _, request = read_entry(fields)
        except ProtocolError as exc:
            log.error("dropping unreadable stream entry %r of %s: %s", entry_id, stream, exc)
            self._on_bad_entry(stream, entry_id)
            return
        if request.deadline and request.deadline < time.time():
            log.info("request %s expired before it was read", request.req_id)
        self._on_request(entry_id, request)

    def _listen_loop(self) -> None:
        channels = [self._keys.worker_channel(self._worker_id), self._keys.control_channel(self._model)]
        sharded = is_cluster(self._client)
        while not self._stopped.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                subscribe(pubsub, channels, sharded)
                while not self._stopped.is_set():
                    message = next_message(pubsub, 0.2, sharded)
                    if message is None or not is_data(message):
                        continue
                    try:
                        self._on_control(decode_control(message["data"]))
                    except ProtocolError as exc:
                        log.warning("ignoring unreadable control message: %s", exc)
            except redis.RedisError as exc:
                log.warning("control subscription lost (%s); resubscribing", exc)
                self._stopped.wait(_RETRY_SECONDS)
            finally:
                self._safe(pubsub.close)

    @staticmethod
    def _safe(fn: Callable[[], object]) -> None:
        try:
            fn()
        except redis.RedisError:
            pass


def _name(stream: bytes | str) -> str:
    return stream.decode() if isinstance(stream, bytes) else stream
