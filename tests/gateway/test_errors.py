"""Bad input, limits and failures: TGI's `{"error","error_type"}` with the right status, nothing queued."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest
import redis

from common.config import DEFAULT_MODEL_ID
from common.streams import Keys
from tests.gateway.harness import GatewayServer, ScriptedWorker

pytestmark = pytest.mark.timeout(60)


def _nothing_queued(gw: GatewayServer, worker: ScriptedWorker) -> None:
    # A probe goes through the same stream: once the worker has it, a request wrongly queued
    # before it would have reached the worker first.
    assert worker.received == []
    headers = {"x-request-id": "probe"}
    if gw.config.api_key:
        headers["authorization"] = f"Bearer {gw.config.api_key}"
    probe = httpx.post(f"{gw.url}/generate", json={"inputs": "probe", "parameters": {"max_new_tokens": 1}},
                       headers=headers, timeout=10)
    assert probe.status_code == 200, probe.text
    assert [req.req_id for req in worker.received] == ["probe"]
    worker.received.clear()
    r = redis.Redis.from_url(gw.config.fleet.effective_redis_url)
    assert r.xlen(Keys(gw.config.fleet.key_prefix).request_stream(DEFAULT_MODEL_ID)) == 0
    r.close()
    deadline = time.monotonic() + 5
    while (gw.ctx.queue_client.in_flight or gw.ctx.permits.used) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gw.ctx.queue_client.in_flight == 0 and gw.ctx.permits.used == 0


@pytest.mark.parametrize(("body", "status", "error_type", "message"), [
    (b"{not json", 400, "bad_request", "Failed to parse the request body as JSON"),
    (b"", 400, "bad_request", "Failed to parse the request body as JSON"),
    (b"[1, 2]", 422, "validation", "Input validation error: expected a JSON object with `inputs`"),
    (b"{}", 422, "validation", "Input validation error: missing field `inputs`"),
    (b'{"inputs": ""}', 422, "validation", "Input validation error: `inputs` cannot be empty"),
    (b'{"inputs": 5}', 422, "validation", "Input validation error: `inputs` must be a string, got int"),
    (b'{"inputs": "x", "parameters": {"max_new_tokens": "9"}}', 422, "validation",
     "Input validation error: `max_new_tokens` must be a non-negative integer"),
    (b'{"inputs": "x", "parameters": {"top_p": 1.0}}', 422, "validation",
     "Input validation error: `top_p` must be > 0.0 and < 1.0"),
    (b'{"inputs": "x", "parameters": {"temperature": 0}}', 422, "validation",
     "Input validation error: `temperature` must be strictly positive"),
    (b'{"inputs": "x", "parameters": {"max_new_tokens": 0}}', 422, "validation",
     "Input validation error: `max_new_tokens` must be strictly positive"),
    (b'{"inputs": "x", "parameters": {"stop": ["a","b","c","d","e"]}}', 422, "validation",
     "Input validation error: `stop` supports up to 4 stop sequences. Given: 5"),
    (b'{"inputs": "x", "parameters": {"top_n_tokens": 6}}', 422, "validation",
     "Input validation error: `top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    (b'{"inputs": "x", "parameters": {"max_new_tokens": 600}}', 422, "validation",
     "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 512. Given: 1 `inputs` tokens and "
     "600 `max_new_tokens`"),
    (b'{"inputs": "x", "parameters": {"grammar": {"type": "json", "value": {}}}}', 422, "validation",
     "Input validation error: grammar is not valid: Grammar must have a 'properties' field"),
])
def test_bad_input(gateway: GatewayServer, worker: ScriptedWorker, body: bytes, status: int,
                   error_type: str, message: str) -> None:
    for route in ("/generate", "/generate_stream", "/"):
        r = httpx.post(f"{gateway.url}{route}", content=body, headers={"content-type": "application/json"},
                       timeout=10)
        assert r.status_code == status, (route, r.text)
        got = r.json()
        assert set(got) == {"error", "error_type"}
        assert got["error_type"] == error_type and got["error"].startswith(message), route
    _nothing_queued(gateway, worker)


def test_too_long_input_is_rejected_before_queueing(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    long_text = " ".join(["hello"] * 300)
    n = len(gateway.ctx.tokenizer.encode(long_text))
    r = httpx.post(f"{gateway.url}/generate", json={"inputs": long_text, "parameters": {"max_new_tokens": 5}},
                   timeout=10)
    assert r.status_code == 422
    assert r.json() == {"error": f"Input validation error: `inputs` must have less than 200 tokens. Given: {n}",
                        "error_type": "validation"}
    _nothing_queued(gateway, worker)
    # truncate keeps the last tokens and lets it through
    r = httpx.post(f"{gateway.url}/generate", json={
        "inputs": long_text, "parameters": {"max_new_tokens": 1, "truncate": 10}}, timeout=10)
    assert r.status_code == 200 and len(worker.received[0].input_ids) == 10


def test_over_fleet_kv_capacity(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    worker.capacity_tokens = 64
    worker.heartbeat()
    deadline = time.monotonic() + 5
    while gateway.ctx.fleet.state.max_capacity_tokens != 64 and time.monotonic() < deadline:
        time.sleep(0.02)  # until a fleet refresh has read the new heartbeat
    assert gateway.ctx.fleet.state.max_capacity_tokens == 64
    r = httpx.post(f"{gateway.url}/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 100}},
                   timeout=10)
    assert r.status_code == 422 and "KV capacity" in r.json()["error"]
    _nothing_queued(gateway, worker)


def test_stream_refusals(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    cases = [
        ({"inputs": "x", "parameters": {"best_of": 2, "do_sample": True}},
         "Input validation error: `best_of` != 1 is not supported when streaming tokens"),
        ({"inputs": "x", "parameters": {"decoder_input_details": True}},
         "Input validation error: `decoder_input_details` == true is not supported when streaming tokens"),
    ]
    for body, message in cases:
        r = httpx.post(f"{gateway.url}/generate_stream", json=body, timeout=10)
        assert r.status_code == 422 and r.json()["error"] == message
    r = httpx.post(f"{gateway.url}/generate", json={"inputs": "x", "parameters": {"best_of": 2}}, timeout=10)
    assert r.json()["error"] == "Input validation error: you must use sampling when `best_of` is > 1"
    _nothing_queued(gateway, worker)


@pytest.mark.parametrize("route", ["/generate", "/generate_stream"])
def test_429_over_concurrency_holds_permit_for_the_stream(make_gateway, worker: ScriptedWorker, route: str) -> None:  # type: ignore[no-untyped-def]
    with make_gateway(max_concurrent_requests=1) as gw:
        first_done = threading.Event()

        def long_stream() -> None:
            httpx.post(f"{gw.url}/generate_stream", json={"inputs": "go SLOW", "parameters": {"max_new_tokens": 4}},
                       timeout=20)
            first_done.set()

        t = threading.Thread(target=long_stream)
        t.start()
        deadline = time.monotonic() + 5
        while not worker.received and time.monotonic() < deadline:
            time.sleep(0.02)
        r = httpx.post(f"{gw.url}{route}", json={"inputs": "x", "parameters": {"max_new_tokens": 1}}, timeout=10)
        assert r.status_code == 429
        assert r.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
        assert len(worker.received) == 1
        t.join(timeout=20)
        assert first_done.is_set()
        r = httpx.post(f"{gw.url}{route}", json={"inputs": "x", "parameters": {"max_new_tokens": 1}}, timeout=10)
        assert r.status_code == 200


def test_413_payload_limit(make_gateway, worker: ScriptedWorker) -> None:  # type: ignore[no-untyped-def]
    with make_gateway(payload_limit=1000) as gw:
        r = httpx.post(f"{gw.url}/generate", json={"inputs": "a" * 2000}, timeout=10)
        assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"

        def chunks():  # type: ignore[no-untyped-def]
            yield b'{"inputs": "'
            yield b"a" * 2000
            yield b'"}'

        r = httpx.post(f"{gw.url}/generate", content=chunks(), timeout=10)  # chunked: no content-length
        assert r.status_code == 413
        _nothing_queued(gw, worker)


def test_401_api_key(make_gateway, worker: ScriptedWorker) -> None:  # type: ignore[no-untyped-def]
    with make_gateway(api_key="s3cret") as gw:
        body = {"inputs": "x", "parameters": {"max_new_tokens": 1}}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            r = httpx.post(f"{gw.url}/generate", json=body, headers=headers, timeout=10)
            assert r.status_code == 401 and r.content == b""
        _nothing_queued(gw, worker)
        r = httpx.post(f"{gw.url}/generate", json=body, headers={"authorization": "bearer S3CRET"}, timeout=10)
        assert r.status_code == 200
        assert httpx.get(f"{gw.url}/health", timeout=10).status_code == 200


def test_request_timeout_cancels_on_the_owner(make_gateway, worker: ScriptedWorker) -> None:  # type: ignore[no-untyped-def]
    with make_gateway(request_timeout=0.6) as gw:
        r = httpx.post(f"{gw.url}/generate", json={"inputs": "a HANG", "parameters": {"max_new_tokens": 3}},
                       timeout=10)
        assert r.status_code == 504 and r.json()["error_type"] == "timeout"
        assert worker.received[0].deadline > 0
        deadline = time.monotonic() + 3
        while not worker.cancels and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.cancels[0].req_id == worker.received[0].req_id


def test_404_and_405_answer_tgi_json(gateway: GatewayServer) -> None:
    # Issue 13.11: both used to be plain text.
    r = httpx.get(f"{gateway.url}/no/such/route", timeout=10)
    assert r.status_code == 404 and r.json() == {"error": "Not Found", "error_type": "not_found"}
    r = httpx.get(f"{gateway.url}/generate", timeout=10)
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed", "error_type": "method_not_allowed"}
    assert "POST" in r.headers["allow"]


@pytest.mark.parametrize("route", ["/generate", "/generate_stream", "/v1/completions"])
def test_every_5xx_is_logged_with_its_cause_and_request_id(make_gateway, worker: ScriptedWorker, route: str,  # type: ignore[no-untyped-def]
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # Issue 13.6: a 503 reached a client and the gateway logged nothing about it.
    body = {"prompt": "a HANG"} if route.startswith("/v1") else {"inputs": "a HANG"}
    with make_gateway(request_timeout=0.5) as gw:
        r = httpx.post(f"{gw.url}{route}", json=body, headers={"x-request-id": f"rid-5xx{route.count('_')}"},
                       timeout=10)
        rid = r.headers["x-request-id"]
        if route == "/generate_stream":  # TGI answers stream errors inside the 200 stream
            assert r.status_code == 200 and '"error_type":"timeout"' in r.text
        else:
            assert r.status_code == 504, r.text
    lines = [rec for rec in caplog.records if rec.levelno >= logging.WARNING and "Request deadline exceeded" in rec.getMessage()]
    assert lines, [rec.getMessage() for rec in caplog.records]
    assert any(rid in rec.getMessage() or getattr(rec, "request_id", None) == rid for rec in lines)
