"""The journal writes of a worker's publish rounds (worker/checkpoint.py), against a real Redis:
none per round between two flushes, one RPUSH per request at a flush, at once for a request that
ends or is urged, and a failed round's writes due again ahead of what came since."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from common.protocol import Accepted, Event, EventBatch, Finish, Token, decode_journal_entry
from common.streams import Keys
from worker.checkpoint import Checkpointer

pytestmark = pytest.mark.timeout(30)

REQUESTS = ("r0", "r1", "r2", "r3")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _round(step: int, requests: tuple[str, ...] = REQUESTS) -> dict[str, list[Event]]:
    return {"g1": [Token(r, 0, step - 1, 1000 + step, f" t{step}", -0.5, False) for r in requests]}


def _write(cp: Checkpointer, client: redis.Redis, step: int, events: dict[str, list[Event]]) -> list[str]:
    """One publish round's journal part: the commands it queued (their names)."""
    cp.add(step, events)
    pipe = client.pipeline(transaction=False)
    cp.write(pipe)
    names = [str(args[0]) for args, _ in pipe.command_stack]
    pipe.execute()
    cp.written(True)
    return names


def _journal(client: redis.Redis, keys: Keys, req_id: str) -> list[EventBatch]:
    return [decode_journal_entry(raw) for raw in client.lrange(keys.journal(req_id), 0, -1)]  # type: ignore[misc]


def test_rounds_between_flushes_write_nothing_and_a_flush_one_rpush_per_request(client: redis.Redis,
                                                                                 key_prefix: str) -> None:
    keys = Keys(key_prefix)
    cp = Checkpointer(keys, "w1", ttl=60.0, interval=60.0)  # no timed flush within the test
    for step in range(1, 31):
        assert _write(cp, client, step, _round(step)) == []  # 30 rounds of 4 requests: no command
    cp.urge("r1")
    assert _write(cp, client, 31, {}) == ["RPUSH", "PEXPIRE", "PEXPIRE"]  # the journal and claim's TTL
    (batch,) = _journal(client, keys, "r1")
    assert batch.step == 30 and [t.seq for t in batch.events] == list(range(30))  # type: ignore[union-attr]
    # A request that ends is written with its last event, the others wait.
    finish = {"g1": [Token("r2", 0, 30, 7, " x", -0.1, False), Finish("r2", 0, 31, "length", 3)]}
    assert _write(cp, client, 32, finish) == ["RPUSH", "PEXPIRE", "PEXPIRE"]
    assert [len(b.events) for b in _journal(client, keys, "r2")] == [32]
    assert not client.exists(keys.journal("r0"))

    every = Checkpointer(keys, "w2", ttl=60.0, interval=0.0)  # a flush each round: one RPUSH a request
    names = _write(every, client, 1, {"g1": [Accepted(f"s{i}", 0, "w2") for i in range(4)]})
    assert names.count("RPUSH") == 4 and names.count("PEXPIRE") == 8  # first writes set the TTLs
    names = _write(every, client, 2, _round(2, ("s0", "s1", "s2", "s3")))
    assert names == ["RPUSH"] * 4  # TTLs are refreshed a third of the TTL apart, not each round


def test_a_failed_round_is_written_again_first(client: redis.Redis, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    cp = Checkpointer(keys, "w1", ttl=60.0, interval=60.0)
    cp.add(1, _round(1, ("r0",)))
    cp.urge("r0")
    pipe = client.pipeline(transaction=False)
    cp.write(pipe)
    pipe.reset()  # never sent: the round failed
    cp.written(False)
    assert cp.urgent
    cp.add(2, _round(2, ("r0",)))
    assert _write(cp, client, 3, {})[:1] == ["RPUSH"]
    (batch,) = _journal(client, keys, "r0")
    assert [t.seq for t in batch.events] == [0, 1] and batch.step == 2  # type: ignore[union-attr]


def test_an_urge_covers_the_events_of_its_own_round(client: redis.Redis, key_prefix: str) -> None:
    # An Adopt handled in a round whose events are added after it (worker/output.py): the tokens
    # published to the old gateway before the adopt must be in the journal with the adopter's
    # Accepted, or the adopter never sees them.
    keys = Keys(key_prefix)
    cp = Checkpointer(keys, "w1", ttl=60.0, interval=60.0)
    cp.urge("r0")  # nothing pending yet
    assert _write(cp, client, 1, _round(1, ("r0",)))[:1] == ["RPUSH"]
    assert [len(b.events) for b in _journal(client, keys, "r0")] == [1]
    assert _write(cp, client, 2, _round(2, ("r0",))) == []  # urged once, not for good
