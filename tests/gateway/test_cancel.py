"""POST /cancel/{request_id} on a second gateway ends a stream that the first relays: the client
gets a final event with finish reason "cancelled", the worker drops the request, and ids of no
request, or of another API key's, are refused in TGI's shape. Real processes: Redis, one
synthetic worker, two gateways."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from genfleet.embedded_redis import free_port
from tests.integration.fleet import FleetProcesses, start_gateway, wait_healthy
from tests.reliability.harness import wait_workers_idle, wait_workers_running


@dataclass
class _Fleet:
    processes: FleetProcesses
    other: str  # the second gateway's base URL
    keyed: str  # a third gateway, with an API key


@pytest.fixture(scope="module")
def fleet(redis_server) -> Iterator[_Fleet]:  # type: ignore[no-untyped-def]
    prefix = f"cx{uuid.uuid4().hex[:6]}"
    processes = FleetProcesses(redis_server.url, prefix)
    try:
        processes.start(worker_args=("--synthetic-tokens-per-s", "50"))
        ports = [free_port(), free_port()]
        processes.gateways.append(start_gateway(redis_server.url, prefix, ports[0], f"{prefix}-g1"))
        processes.gateways.append(start_gateway(redis_server.url, prefix, ports[1], f"{prefix}-g2", "--api-key", "k2"))
        for port in ports:
            wait_healthy(f"http://127.0.0.1:{port}", processes.gateways, timeout=60)
        yield _Fleet(processes, f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}")
    finally:
        processes.stop()


@dataclass
class _Stream:
    tokens: int = 0
    details: dict | None = None  # type: ignore[type-arg]
    ended_at: float = 0.0
    first_token: threading.Event = field(default_factory=threading.Event)


def _stream(base: str, req_id: str, out: _Stream, api: str = "tgi") -> None:
    if api == "tgi":
        path, body = "/generate_stream", {"inputs": "count", "parameters": {"max_new_tokens": 500, "details": True}}
    else:
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": "count"}], "max_tokens": 500,
                                              "stream": True}
    with httpx.stream("POST", f"{base}{path}", json=body, headers={"x-request-id": req_id}, timeout=30) as r:
        for line in r.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if api == "tgi":
                out.tokens += 1
                out.details = event.get("details") or out.details
            else:
                choice = event["choices"][0]
                out.tokens += bool(choice["delta"].get("content"))
                if choice.get("finish_reason"):
                    out.details = {"finish_reason": choice["finish_reason"]}
            out.first_token.set()
    out.ended_at = time.monotonic()


@pytest.mark.parametrize("api", ["tgi", "openai"])
def test_a_cancel_from_another_gateway_ends_the_stream_as_cancelled(fleet: _Fleet, redis_server, api: str) -> None:  # type: ignore[no-untyped-def]
    req_id = f"cancel-me-{api}-{uuid.uuid4().hex[:6]}"
    out = _Stream()
    client = threading.Thread(target=_stream, args=(fleet.processes.base_url, req_id, out, api), daemon=True)
    client.start()
    assert out.first_token.wait(30)
    wait_workers_running(redis_server.url, fleet.processes.prefix, at_least=1, timeout=10)
    r = httpx.post(f"{fleet.other}/cancel/{req_id}", timeout=10)
    assert r.status_code == 200 and r.json() == {"request_id": req_id, "cancelled": True}, r.text
    cancelled_at = time.monotonic()
    client.join(10)
    assert not client.is_alive(), "the stream did not end"
    assert out.details is not None and out.details["finish_reason"] == "cancelled"
    assert 0 < out.tokens < 500 and out.ended_at - cancelled_at < 5
    # The worker dropped it (its KV is free again), and a second cancel says it has ended.
    wait_workers_idle(redis_server.url, fleet.processes.prefix, expect=1, timeout=10)
    again = httpx.post(f"{fleet.other}/cancel/{req_id}", timeout=10).json()
    assert again == {"request_id": req_id, "cancelled": False, "finish_reason": "cancelled"}


def test_an_unknown_id_is_404_and_another_keys_request_403(fleet: _Fleet) -> None:
    r = httpx.post(f"{fleet.other}/cancel/no-such-request", timeout=10)
    assert r.status_code == 404 and r.json()["error_type"] == "unknown_request"
    req_id = f"mine-{uuid.uuid4().hex[:6]}"
    done = httpx.post(f"{fleet.processes.base_url}/generate", headers={"x-request-id": req_id}, timeout=30,
                      json={"inputs": "hi", "parameters": {"max_new_tokens": 2}})
    assert done.status_code == 200
    assert httpx.post(f"{fleet.keyed}/cancel/{req_id}", timeout=10).status_code == 401  # no key at all
    r = httpx.post(f"{fleet.keyed}/cancel/{req_id}", headers={"authorization": "Bearer k2"}, timeout=10)
    assert r.status_code == 403 and r.json()["error_type"] == "forbidden", r.text
    r = httpx.post(f"{fleet.other}/cancel/{req_id}", timeout=10)
    assert r.json() == {"request_id": req_id, "cancelled": False, "finish_reason": "length"}
