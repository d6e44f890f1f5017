"""The worker process's control plane against a real Redis, with a scripted engine.

The engine here is deterministic and model-free (next token = a function of the prompt), so these
tests pin down what the worker does around it: intake budget, Accepted + XACK, one publish per
gateway per step, stop sequences, cancels, heartbeats and the drain on stop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from transformers import AutoTokenizer

from common.config import FleetConfig, WorkerConfig
from common.errors import GATEWAY_GONE
from common.protocol import (
    Accepted,
    Adopt,
    Cancel,
    EventBatch,
    Error,
    Finish,
    GenerateRequest,
    Token,
    decode_events,
    decode_journal_entry,
    decode_worker_info,
    encode,
)
from common.sampling_params import SamplingParams
from common.streams import CONSUMER_GROUP, REQUEST_FIELD, Keys
from worker.batch import EngineStats, RequestOutput
from worker.intake import ensure_group
from worker.request import Request, RequestKey
from worker.worker import Worker


@dataclass
class ScriptedEngine:
    """Emits the ids of `script` one per step for every request, then finishes with "length"."""

    script: list[int]
    capacity: int = 4
    running: dict[RequestKey, tuple[Request, int]] = field(default_factory=dict)
    aborted: list[RequestKey] = field(default_factory=list)
    steps: int = 0

    def add_request(self, req: Request) -> None:
        self.running[req.key] = (req, 0)

    def abort_request(self, key: RequestKey) -> None:
        if self.running.pop(key, None) is not None:
            self.aborted.append(key)

    def has_unfinished_requests(self) -> bool:
        return bool(self.running)

    def num_admittable(self) -> int:
        return self.capacity - len(self.running)

    def stats(self) -> EngineStats:
        return EngineStats(len(self.running), 0, 100 * (self.capacity - len(self.running)), 100 * self.capacity,
                           0, 0, 0, self.steps)

    def step(self) -> list[RequestOutput]:
        time.sleep(0.01)
        self.steps += 1
        outs = []
        for key, (req, n) in list(self.running.items()):
            budget = req.params.max_new_tokens
            token = self.script[n % len(self.script)]
            done = n + 1 >= budget
            outs.append(RequestOutput(key, [token], [-0.5], [], "length" if done else None, len(req.prompt_ids), 0))
            if done:
                del self.running[key]
            else:
                self.running[key] = (req, n + 1)
        return outs


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(default_model_dir)


def _start(redis_url: str, key_prefix: str, tokenizer, worker_id: str, **settings: object) -> tuple[Worker, ScriptedEngine, threading.Thread]:  # type: ignore[no-untyped-def]
    script = tokenizer(" one two three STOP four five six seven", add_special_tokens=False).input_ids
    engine = ScriptedEngine(script)
    config = WorkerConfig(
        fleet=FleetConfig(model_id="m", redis_url=redis_url, key_prefix=key_prefix, heartbeat_interval=0.2,
                          heartbeat_ttl=1.0, graceful_termination_timeout=5.0),
        worker_id=worker_id, **settings,  # type: ignore[arg-type]
    )
    worker = Worker(config, engine, tokenizer)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return worker, engine, thread


@pytest.fixture
def running_worker(redis_url: str, key_prefix: str, tokenizer) -> Iterator[tuple[Worker, ScriptedEngine]]:  # type: ignore[no-untyped-def]
    worker, engine, thread = _start(redis_url, key_prefix, tokenizer, "w1", gateway_grace_period=1.0)
    yield worker, engine
    worker.request_stop()
    thread.join(10)
    assert not thread.is_alive()


def _send(client: redis.Redis, keys: Keys, req_id: str, max_new: int, stop: tuple[str, ...] = ()) -> None:
    req = GenerateRequest(req_id, 0, "g1", "m", [1, 2, 3], SamplingParams(max_new_tokens=max_new, stop=stop))
    client.xadd(keys.request_stream("m"), {REQUEST_FIELD: encode(req)})


def _collect(pubsub, until: set[str], timeout: float = 10.0) -> list[object]:  # type: ignore[no-untyped-def]
    events: list[object] = []
    finished: set[str] = set()
    deadline = time.monotonic() + timeout
    while finished != until and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.2)
        if msg and msg["type"] == "message":
            for event in decode_events(msg["data"]).events:
                events.append(event)
                if isinstance(event, Finish):
                    finished.add(event.req_id)
    assert finished == until, f"finished {finished}, wanted {until}"
    return events


def test_requests_flow_accepted_tokens_finish_and_are_acked(running_worker, redis_url: str, key_prefix: str, tokenizer) -> None:  # type: ignore[no-untyped-def]
    _, engine = running_worker
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.gateway_channel("g1"))
    for i in range(3):
        _send(client, keys, f"r{i}", max_new=4)
    events = _collect(pubsub, {"r0", "r1", "r2"})
    for rid in ("r0", "r1", "r2"):
        mine = [e for e in events if getattr(e, "req_id", None) == rid]
        assert isinstance(mine[0], Accepted) and mine[0].worker_id == "w1"
        tokens = [e for e in mine if isinstance(e, Token)]
        assert [t.seq for t in tokens] == [0, 1, 2, 3]
        assert "".join(t.text for t in tokens) == tokenizer.decode(engine.script[:4])
        assert isinstance(mine[-1], Finish) and mine[-1].reason == "length" and mine[-1].seq == 4
    pending = client.xpending(keys.request_stream("m"), CONSUMER_GROUP)
    assert pending["pending"] == 0
    pubsub.close()
    client.close()


def test_stop_sequence_finishes_and_aborts_in_engine(running_worker, redis_url: str, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    worker, engine = running_worker
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.gateway_channel("g1"))
    _send(client, keys, "s1", max_new=50, stop=("STOP",))
    events = _collect(pubsub, {"s1"})
    text = "".join(e.text for e in events if isinstance(e, Token))
    assert text.endswith("STOP") and "four" not in text
    assert [e for e in events if isinstance(e, Finish)][0].reason == "stop_sequence"
    deadline = time.monotonic() + 5
    while RequestKey("s1", 0) not in engine.aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert RequestKey("s1", 0) in engine.aborted
    pubsub.close()
    client.close()


def test_cancel_reaches_the_engine(running_worker, redis_url: str, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    worker, engine = running_worker
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix)
    _send(client, keys, "c1", max_new=100_000)
    deadline = time.monotonic() + 30  # generous: under a loaded CI box each wait can take seconds
    while RequestKey("c1", 0) not in engine.running and time.monotonic() < deadline:
        time.sleep(0.02)
    client.publish(keys.worker_channel("w1"), encode(Cancel("c1", 0)))
    while RequestKey("c1", 0) not in engine.aborted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert RequestKey("c1", 0) in engine.aborted
    # ...and the output side forgets it too (it held every cancelled request's state for good).
    while worker.output._live and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not worker.output._live
    client.close()


def test_heartbeat_carries_load_and_disappears_on_stop(running_worker, redis_url: str, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    worker, _ = running_worker
    client = redis.Redis.from_url(redis_url)
    key = Keys(key_prefix).worker_heartbeat("w1")
    deadline = time.monotonic() + 3
    while client.get(key) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    info = decode_worker_info(client.get(key))
    assert info.worker_id == "w1" and info.capacity_tokens == 400 and not info.draining
    assert 0 < client.pttl(key) <= 1000
    client.close()


def test_intake_never_takes_more_than_the_engine_admits(running_worker, redis_url: str, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    worker, engine = running_worker
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix)
    for i in range(10):
        _send(client, keys, f"b{i}", max_new=100_000)
    stream = keys.request_stream("m")
    deadline = time.monotonic() + 5
    while (len(engine.running) < engine.capacity or client.xinfo_groups(stream)[0]["lag"] > 10 - engine.capacity) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    # Full and caught up; a few more reads' worth of time must not take more.
    settled = time.monotonic() + 0.5
    while time.monotonic() < settled:
        assert len(engine.running) <= engine.capacity
        time.sleep(0.02)
    assert len(engine.running) == engine.capacity
    info = client.xinfo_groups(stream)[0]
    assert info["lag"] == 10 - engine.capacity  # the rest stays in the stream for other workers
    for i in range(10):
        client.publish(keys.control_channel("m"), encode(Cancel(f"b{i}", -1)))
    client.close()


def test_orphaned_entry_of_a_dead_worker_is_reclaimed(running_worker, redis_url: str, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix)
    stream = keys.request_stream("m")
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.gateway_channel("g1"))
    worker, engine = running_worker
    # A worker that read the entry and died before accepting it (it has no heartbeat). The add and
    # its read are one transaction, so the live worker's blocked read cannot win the entry.
    req = GenerateRequest("o1", 0, "g1", "m", [1, 2, 3], SamplingParams(max_new_tokens=3))
    ensure_group(client, stream)  # the worker creates it as it starts, maybe not yet
    pipe = client.pipeline(transaction=True)
    pipe.xadd(stream, {REQUEST_FIELD: encode(req)})
    pipe.xreadgroup(CONSUMER_GROUP, "dead-worker", {stream: ">"}, count=1)
    _, got = pipe.execute()
    assert got and got[0][1]
    events = _collect(pubsub, {"o1"}, timeout=10)
    assert any(isinstance(e, Accepted) and e.worker_id == "w1" for e in events)
    assert client.xpending(stream, CONSUMER_GROUP)["pending"] == 0
    assert worker.reclaimer.reclaimed == 1
    pubsub.close()
    client.close()


def test_gateway_death_cancels_its_requests(running_worker, redis_url: str, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    worker, engine = running_worker
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.gateway_channel("g2"))
    client.set(keys.gateway_heartbeat("g2"), b"x", px=1500)
    req = GenerateRequest("d1", 0, "g2", "m", [1, 2, 3], SamplingParams(max_new_tokens=100_000))
    client.xadd(keys.request_stream("m"), {REQUEST_FIELD: encode(req)})
    deadline = time.monotonic() + 8
    while RequestKey("d1", 0) not in engine.aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert RequestKey("d1", 0) in engine.aborted
    # A gateway taken for dead may only have been stalled: it is told, so it can carry on.
    errors: list[Error] = []
    while not errors and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.2)
        if msg and msg["type"] == "message":
            errors += [e for e in decode_events(msg["data"]).events if isinstance(e, Error)]
    assert [(e.req_id, e.error_type) for e in errors] == [("d1", GATEWAY_GONE)]
    pubsub.close()
    client.close()


def test_steps_are_journaled_and_an_adopt_moves_the_stream(running_worker, redis_url: str, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    worker, engine = running_worker
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.gateway_channel("g1"), keys.gateway_channel("g3"))
    _send(client, keys, "a1", 100_000)
    seen: dict[str, list[object]] = {"g1": [], "g3": []}
    deadline = time.monotonic() + 10

    def collect(until) -> None:  # type: ignore[no-untyped-def]
        while not until() and time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.2)
            if msg and msg["type"] == "message":
                seen[msg["channel"].decode().rsplit(":", 1)[1]] += decode_events(msg["data"]).events

    collect(lambda: sum(isinstance(e, Token) for e in seen["g1"]) >= 3)
    client.publish(keys.worker_channel("w1"), encode(Adopt("a1", "g3")))
    collect(lambda: sum(isinstance(e, Token) for e in seen["g3"]) >= 3)
    client.publish(keys.worker_channel("w1"), encode(Cancel("a1", 0)))
    while RequestKey("a1", 0) not in engine.aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    # The new gateway's stream starts with the owner's Accepted; the two channels' tokens follow
    # each other with no gap and no overlap.
    assert isinstance(seen["g3"][0], Accepted) and seen["g3"][0].worker_id == "w1"
    first = [e.seq for e in seen["g1"] if isinstance(e, Token)]
    second = [e.seq for e in seen["g3"] if isinstance(e, Token)]
    assert first + second == list(range(len(first) + len(second)))
    # Every event published is in the journal, in EventBatches of distinct steps: once the
    # cancelled request's last events are flushed (a running request's journal is written every
    # --checkpoint-interval; a dropped one's at once). A round of only an Accepted, the first one's
    # or the adopter's, carries no step: 0.
    def journal() -> list[object]:
        return [decode_journal_entry(raw) for raw in client.lrange(keys.journal("a1"), 0, -1)]

    def journaled_seqs(entries: list[object]) -> list[int]:
        return [ev.seq for e in entries if isinstance(e, EventBatch) for ev in e.events if isinstance(ev, Token)]

    entries = journal()
    while len(journaled_seqs(entries)) < len(first) + len(second) and time.monotonic() < deadline:
        time.sleep(0.05)
        entries = journal()
    assert entries and all(isinstance(e, EventBatch) and e.worker_id == "w1" for e in entries)
    steps = [e.step for e in entries if isinstance(e, EventBatch) and any(isinstance(ev, Token) for ev in e.events)]
    assert 0 not in steps
    assert len(steps) == len(set(steps))
    journaled = journaled_seqs(entries)
    assert journaled[: len(first) + len(second)] == first + second
    assert 0 < client.pttl(keys.journal("a1")) <= 60_000
    pubsub.close()
    client.close()


def test_checkpointing_off_writes_no_journal(redis_url: str, key_prefix: str, tokenizer) -> None:  # type: ignore[no-untyped-def]
    worker, _, thread = _start(redis_url, key_prefix, tokenizer, "w2", checkpoint_tokens=False)
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.gateway_channel("g1"))
    _send(client, keys, "n1", 3)
    finished = False
    deadline = time.monotonic() + 10
    while not finished and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.2)
        if msg and msg["type"] == "message":
            finished = any(isinstance(e, Finish) for e in decode_events(msg["data"]).events)
    assert finished and not client.exists(keys.journal("n1"))
    worker.request_stop()
    thread.join(10)
    pubsub.close()
    client.close()


def test_a_model_id_naming_no_directory_exits_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from worker.worker import run_worker

    config = WorkerConfig(fleet=FleetConfig(model_id=str(tmp_path / "absent")), device="cpu")
    assert run_worker(config) == 2  # before it ever reaches Redis: no traceback
    assert "no such directory" in capsys.readouterr().err
