"""The admission path: bodies are read (bounded in time, size and number) before a permit is taken."""

from __future__ import annotations

import json
import logging
import socket
import time

import httpx
import pytest

from tests.gateway.harness import ScriptedWorker, open_raw, post_head, read_response

pytestmark = pytest.mark.timeout(60)

_ROUTES = ("/", "/generate", "/generate_stream", "/v1/completions", "/v1/chat/completions", "/tokenize",
           "/chat_tokenize")


def test_stalled_bodies_hold_no_permit_and_time_out(make_gateway, worker: ScriptedWorker) -> None:  # type: ignore[no-untyped-def]
    # Issue 13.1: connections that send headers and 5 bytes of a 64-byte body, then idle, used to
    # hold every permit (the permit was taken before the body was read) with no read timeout.
    with make_gateway(max_concurrent_requests=2, body_read_timeout=1.5, max_unfinished_bodies=4) as gw:
        stalled = [open_raw(gw, post_head("/generate", 64), b'{"inp') for _ in range(3)]
        try:
            deadline = time.monotonic() + 5
            while gw.ctx.bodies.unfinished < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert gw.ctx.bodies.unfinished == 3 and gw.ctx.permits.used == 0
            for _ in range(3):  # more requests than permits, one after the other: all served
                r = httpx.post(f"{gw.url}/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 1}},
                               timeout=10)
                assert r.status_code == 200, r.text
            # The unfinished bodies have a bound of their own: the fifth gets 429 at once.
            stalled.append(open_raw(gw, post_head("/generate", 64), b'{"inp'))
            while gw.ctx.bodies.unfinished < 4 and time.monotonic() < deadline + 5:
                time.sleep(0.02)
            stalled.append(open_raw(gw, post_head("/generate", 64), b'{"inp'))
            status, _, body = read_response(stalled[-1], timeout=5)
            assert status == 429 and json.loads(body)["error_type"] == "overloaded"
            # Within the body timeout every stalled connection gets TGI's error shape, and goes.
            started = time.monotonic()
            for sock in stalled[:4]:
                status, headers, body = read_response(sock, timeout=5)
                assert status == 408 and headers["connection"] == "close"
                assert json.loads(body) == {"error": "Request body not received within 1.5 s",
                                            "error_type": "request_timeout"}
            assert time.monotonic() - started < 3.0
            assert gw.ctx.bodies.unfinished == 0 and gw.ctx.permits.used == 0
        finally:
            for sock in stalled:
                sock.close()


@pytest.mark.parametrize("route", _ROUTES)
def test_payload_limit_holds_on_the_bytes_as_they_arrive(make_gateway, worker: ScriptedWorker, route: str) -> None:  # type: ignore[no-untyped-def]
    # Issue 13.3: POST / read the whole body before checking --payload-limit. A chunked body (no
    # content-length) that passes the limit and then stalls must get its 413 without the rest.
    with make_gateway(payload_limit=1000, body_read_timeout=30) as gw:
        first = b'{"inputs": "' + b"a" * 1200
        sock = open_raw(gw, post_head(route, None), b"%x\r\n%s\r\n" % (len(first), first))
        try:
            started = time.monotonic()
            status, headers, body = read_response(sock, timeout=10)
            assert time.monotonic() - started < 5.0
            assert status == 413 and headers["connection"] == "close"
            assert json.loads(body) == {"error": "Payload too large: the limit is 1000 bytes",
                                        "error_type": "payload_too_large"}
        finally:
            sock.close()
        assert worker.received == [] and gw.ctx.permits.used == 0


def test_a_client_that_drops_mid_body_is_one_info_line(gateway, worker: ScriptedWorker,  # type: ignore[no-untyped-def]
                                                       caplog: pytest.LogCaptureFixture) -> None:
    # Issue 13.11: each such client used to log a ClientDisconnect traceback.
    caplog.set_level(logging.INFO)
    for route in ("/generate", "/v1/completions"):
        sock = open_raw(gateway, post_head(route, 64), b'{"inp')
        deadline = time.monotonic() + 5
        while gateway.ctx.bodies.unfinished < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [r for r in caplog.records if "left before sending its whole body" in r.getMessage()]
        if len(lines) == 2:
            break
        time.sleep(0.02)
    assert len(lines) == 2 and all(r.levelno == logging.INFO for r in lines)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    assert gateway.ctx.bodies.unfinished == 0 and worker.received == []
