"""Naming and resuming requests at the gateway's edge: Idempotency-Key and Last-Event-ID are
checked before anything is queued, in TGI's error shape. Replays, adoption and retries against
real workers are tests/reliability/test_resume*.py."""

from __future__ import annotations

import httpx
import pytest

from common.errors import GenfleetError
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
