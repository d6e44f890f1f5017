"""Naming and resuming requests at the gateway's edge: Idempotency-Key and Last-Event-ID are
checked before anything is queued, in TGI's error shape; and adoption against an owner scripted
step by step, to open the windows a loaded fleet opens only now and then. Replays, adoption and
retries against real workers are tests/reliability/test_resume*.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import msgspec
import pytest

from common.errors import GenfleetError
from common.protocol import Accepted, Adopt, Error, Event, EventBatch, Finish, GatewayInfo, Token, encode
from gateway.resume import parse_last_event_id
from tests.gateway.harness import GatewayServer, ScriptedWorker

pytestmark = pytest.mark.timeout(60)

BODY = {"inputs": "x", "parameters": {"max_new_tokens": 1}}


def test_last_event_id_parses_as_our_event_ids() -> None:
    assert parse_last_event_id(None, None) is None
    assert parse_last_event_id("abc:12", None) == ("abc", 12)
    assert parse_last_event_id(" a:b:0 ", "a:b") == ("a:b", 0)  # ids may hold colons: the seq is last
    for bad in ("abc", "abc:", ":3", "abc:-1", "abc:x", "abc:1234567890"):
        with pytest.raises(GenfleetError) as info:
            parse_last_event_id(bad, None)
        assert info.value.status_code == 400
    with pytest.raises(GenfleetError, match="names request abc"):
        parse_last_event_id("abc:3", "other")


def test_a_bad_idempotency_key_or_last_event_id_is_refused(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    r = httpx.post(f"{gateway.url}/generate", json=BODY, headers={"Idempotency-Key": "two words"}, timeout=10)
    assert r.status_code == 400
    assert r.json() == {"error": "`Idempotency-Key` must be 1 to 128 characters of A-Z a-z 0-9 . _ : -",
                        "error_type": "bad_request"}
    r = httpx.post(f"{gateway.url}/generate_stream", json=BODY, headers={"Last-Event-ID": "no-seq"}, timeout=10)
    assert r.status_code == 400 and r.json()["error_type"] == "bad_request"
    r = httpx.post(f"{gateway.url}/generate_stream", json=BODY, headers={"Last-Event-ID": "nobody:4"}, timeout=10)
    assert r.status_code == 404
    assert r.json() == {"error": "No request nobody to resume: it is unknown, or it ended longer ago than its "
                                 "journal is kept", "error_type": "unknown_request"}
    assert worker.received == []


def test_an_idempotency_key_names_the_request_and_each_run_of_a_fan_out(gateway: GatewayServer,
                                                                        worker: ScriptedWorker) -> None:
    r = httpx.post(f"{gateway.url}/generate", json=BODY, headers={"Idempotency-Key": "key-1"}, timeout=10)
    assert r.status_code == 200 and r.headers["x-request-id"] == "key-1"
    body = {"inputs": "y", "parameters": {"max_new_tokens": 1, "best_of": 2, "do_sample": True}}
    r = httpx.post(f"{gateway.url}/generate", json=body, headers={"x-request-id": "fan"}, timeout=10)
    assert r.status_code == 200
    assert worker.received[0].req_id == "key-1"
    assert sorted(m.req_id for m in worker.received[1:]) == ["fan.0", "fan.1"]  # the runs race to the XADD
    # The same id with another prompt is another request, under a suffixed id.
    r = httpx.post(f"{gateway.url}/generate", json={"inputs": "z", "parameters": {"max_new_tokens": 1}},
                   headers={"Idempotency-Key": "key-1"}, timeout=10)
    assert r.status_code == 200 and worker.received[-1].req_id.startswith("key-1-")


def test_the_get_form_refuses_before_any_stream_starts(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    sse = {"Accept": "text/event-stream"}
    r = httpx.get(f"{gateway.url}/generate_stream/nobody", headers=sse, timeout=10)
    assert r.status_code == 404 and r.json()["error_type"] == "unknown_request", r.text
    r = httpx.get(f"{gateway.url}/generate_stream/two%20words", headers=sse, timeout=10)
    assert r.status_code == 400
    assert r.json() == {"error": "`request_id` must be 1 to 128 characters of A-Z a-z 0-9 . _ : -",
                        "error_type": "bad_request"}
    for header in ({"Last-Event-ID": "other:3"}, {"Last-Event-ID": "nobody"}):
        r = httpx.get(f"{gateway.url}/generate_stream/nobody", headers={**sse, **header}, timeout=10)
        assert r.status_code == 400 and r.json()["error_type"] == "bad_request", r.text
    r = httpx.get(f"{gateway.url}/generate_stream/nobody", params={"last_event_id": "other:3"}, timeout=10)
    assert r.status_code == 400 and "names request other" in r.json()["error"], r.text
    assert worker.received == []


def test_the_get_form_is_behind_the_api_key(make_gateway) -> None:  # type: ignore[no-untyped-def]
    with make_gateway(api_key="sesame") as gw:
        r = httpx.get(f"{gw.url}/generate_stream/nobody", timeout=10)
        assert r.status_code == 401 and r.content == b""
        r = httpx.get(f"{gw.url}/generate_stream/nobody", headers={"authorization": "Bearer sesame"}, timeout=10)
        assert r.status_code == 404
        assert httpx.get(f"{gw.url}/health", timeout=10).status_code == 200  # GET / and /health stay open


# -- adoption: the owner is this test, which decides when each of its messages goes out ------------
_GONE = "gw-gone"  # the gateway the request was first submitted through: no heartbeat, so dead
_MAX_NEW = 8


def _token(req_id: str, seq: int) -> Token:
    return Token(req_id, 0, seq, 1000 + seq, f" w{seq}", -0.5, False)  # as the scripted worker's


class _Owner:
    """The worker that owns a running request whose gateway died: it journals and publishes as
    worker/output.py does, one call per publish round, at the moments the test picks."""

    def __init__(self, gw: GatewayServer, worker: ScriptedWorker, req_id: str) -> None:
        self.gw, self.worker, self.req_id = gw, worker, req_id
        self.r, self.keys = worker.r, worker.keys
        # The same body through this gateway gives the request's prompt and parameters as it
        # computes them (the scripted worker answers it); only the id and the gateway differ.
        body = {"inputs": "adopted", "parameters": {"max_new_tokens": _MAX_NEW, "details": True}}
        assert httpx.post(f"{gw.url}/generate", json=body, timeout=10).status_code == 200
        probe = worker.received[-1]
        self.request = msgspec.structs.replace(probe, req_id=req_id, gateway_id=_GONE)
        self.body = body
        self.r.set(self.keys.claim(req_id), encode(self.request), px=60_000)

    def round(self, per_gateway: dict[str, list[Event]], flushed: tuple[Event, ...] = ()) -> None:
        """One publish round of the owner's: the request's events journaled (after `flushed`,
        those of earlier rounds that wait for a flush there), then published to each gateway."""
        events = [*flushed, *(e for batch in per_gateway.values() for e in batch)]
        pipe = self.r.pipeline(transaction=False)
        pipe.rpush(self.keys.journal(self.req_id), encode(EventBatch(self.worker.worker_id, 0, events)))
        pipe.pexpire(self.keys.journal(self.req_id), 60_000)
        for gateway_id, batch in per_gateway.items():
            pipe.publish(self.keys.gateway_channel(gateway_id), encode(EventBatch(self.worker.worker_id, 0, batch)))
        pipe.execute()

    def accepted(self, gateway_id: str) -> Accepted:
        return Accepted(self.req_id, 0, self.worker.worker_id, gateway_id)

    def adopts(self) -> int:
        return sum(isinstance(c, Adopt) and c.req_id == self.req_id for c in list(self.worker.cancels))

    def finish(self, gateway_id: str, start: int) -> None:
        tokens: list[Event] = [_token(self.req_id, seq) for seq in range(start, _MAX_NEW)]
        self.round({gateway_id: [*tokens, Finish(self.req_id, 0, _MAX_NEW, "length", len(self.request.input_ids))]})


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _resume(gw: GatewayServer, owner: _Owner, after: int, script: Callable[[], None]) -> tuple[list[int], dict[str, object]]:
    """Resume `owner`'s request through `gw` after seq `after` while `script` plays the owner:
    the seqs the client received, and its last event."""
    headers = {"x-request-id": owner.req_id, "Last-Event-ID": f"{owner.req_id}:{after}"}
    seqs: list[int] = []
    last: dict[str, object] = {}
    with ThreadPoolExecutor(1) as pool:
        played = pool.submit(script)
        with httpx.stream("POST", f"{gw.url}/generate_stream", json=owner.body, headers=headers, timeout=15) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if line.startswith("id:"):
                    seqs.append(int(line.rsplit(":", 1)[1]))
                elif line.startswith("data:"):
                    last = json.loads(line[5:])
        played.result(timeout=15)
    return seqs, last


@pytest.fixture
def owner(gateway: GatewayServer, worker: ScriptedWorker) -> Iterator[_Owner]:
    o = _Owner(gateway, worker, f"adopted-{time.monotonic_ns()}")
    o.round({_GONE: [o.accepted(_GONE)]})  # the owner took it, for the gateway now dead
    o.round({_GONE: [_token(o.req_id, seq) for seq in range(3)]})  # a flush of seq 0-2
    yield o


_TEXT = "".join(f" w{seq}" for seq in range(_MAX_NEW))


def test_an_adopter_sends_what_the_journal_gained_while_it_waited_for_the_owner(gateway: GatewayServer,
                                                                              owner: _Owner) -> None:
    # The client had seq 0-3 from the dead gateway; seq 3 is not journaled yet. The owner is slow
    # to take the Adopt (a busy engine step): meanwhile its periodic flush journals seq 3 and 4,
    # published to the dead gateway, and the adopter, done waiting, reads them before it asks
    # again. Only then does the owner answer, and seq 5 on come live.
    def play() -> None:
        _wait(lambda: owner.adopts() >= 1)
        owner.round({_GONE: [_token(owner.req_id, 3), _token(owner.req_id, 4)]})
        _wait(lambda: owner.adopts() >= 2)  # the adopter's wait is over: it asks again
        mine = gateway.config.gateway_id
        owner.round({mine: [owner.accepted(mine)]})
        owner.finish(mine, 5)

    seqs, last = _resume(gateway, owner, 3, play)
    assert seqs == [4, 5, 6, 7] and last["generated_text"] == _TEXT, last


def test_an_adopter_that_lost_the_request_to_another_sends_what_the_journal_holds_past_its_relay(
        gateway: GatewayServer, owner: _Owner) -> None:
    # The adoption goes through (its round flushes seq 3, published to the dead gateway). Then
    # another gateway adopts the request too and the owner takes its Adopt last: the Accepted
    # naming that one reaches this one in a round that publishes seq 5 to the other only, and
    # journals it. This gateway follows the journal from there.
    other = "gw-other"
    now = time.time()
    owner.r.set(owner.keys.gateway_heartbeat(other), encode(GatewayInfo(other, 1, now, now)), ex=30)
    mine = gateway.config.gateway_id

    def play() -> None:
        _wait(lambda: owner.adopts() >= 1)
        owner.round({mine: [owner.accepted(mine), _token(owner.req_id, 4)]}, flushed=(_token(owner.req_id, 3),))
        owner.round({other: [owner.accepted(other), _token(owner.req_id, 5)], mine: [owner.accepted(other)]})
        owner.finish(other, 6)

    try:
        seqs, last = _resume(gateway, owner, 2, play)
    finally:
        owner.r.delete(owner.keys.gateway_heartbeat(other))
    assert seqs == [3, 4, 5, 6, 7] and last["generated_text"] == _TEXT, last


def test_an_adopter_sends_the_tokens_before_the_error_that_ended_the_request(gateway: GatewayServer,
                                                                             owner: _Owner) -> None:
    # The request fails on its worker while the adopter waits for the owner's Accepted: the
    # journal read that finds the error also holds the two tokens before it.
    def play() -> None:
        _wait(lambda: owner.adopts() >= 1)
        error = Error(owner.req_id, 0, "generation", "Request failed during generation: boom")
        owner.round({_GONE: [_token(owner.req_id, 3), _token(owner.req_id, 4), error]})

    seqs, last = _resume(gateway, owner, 2, play)
    assert seqs == [3, 4], seqs
    assert last == {"error": "Request failed during generation: boom", "error_type": "generation"}, last
