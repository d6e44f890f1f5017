"""Bounded request heads (431, 408) and checked client request ids (400), in TGI's error shape (issue 13.4)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.gateway.harness import GatewayServer, ScriptedWorker, open_raw, read_response

pytestmark = pytest.mark.timeout(60)


def _get(gw: GatewayServer, *headers: str) -> bytes:
    return "\r\n".join(["GET /health HTTP/1.1", "host: 127.0.0.1", *headers]).encode()


def test_a_huge_header_gets_431_before_it_has_all_arrived(gateway: GatewayServer) -> None:
    # A 100 MB header used to be read whole and answered 200 after 12 s.
    limit = gateway.config.max_header_bytes
    sock = open_raw(gateway, b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: " + b"a" * (2 * limit))
    try:
        started = time.monotonic()
        status, headers, body = read_response(sock, timeout=5)
        assert time.monotonic() - started < 2.0
        assert status == 431 and headers["connection"] == "close"
        assert json.loads(body) == {"error": f"Request header fields too large: the limit is {limit} bytes",
                                    "error_type": "header_too_large"}
    finally:
        sock.close()


def test_too_many_headers_get_431(gateway: GatewayServer) -> None:
    n = gateway.config.max_header_count + 1
    sock = open_raw(gateway, _get(gateway, *(f"x-h{i}: 1" for i in range(n))))
    try:
        status, _, body = read_response(sock, timeout=5)
        assert status == 431
        assert json.loads(body)["error"] == f"Too many request header fields: the limit is {n - 1}"
    finally:
        sock.close()
    # Below both bounds, the same connection style is served.
    sock = open_raw(gateway, _get(gateway, *(f"x-h{i}: 1" for i in range(n - 5))))
    try:
        assert read_response(sock, timeout=5)[0] == 200
    finally:
        sock.close()


@pytest.mark.parametrize("rid", ["a" * 129, "two words", "<script>", "id/with/slashes", "é"])
def test_a_bad_client_request_id_is_refused(gateway: GatewayServer, worker: ScriptedWorker, rid: str) -> None:
    # A 60 KB x-request-id used to be echoed back, and named the request on the wire.
    r = httpx.post(f"{gateway.url}/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 1}},
                   headers={"x-request-id": rid.encode()}, timeout=10)  # type: ignore[dict-item]
    assert r.status_code == 400
    assert r.json() == {"error": "`x-request-id` must be 1 to 128 characters of A-Z a-z 0-9 . _ : -",
                        "error_type": "bad_request"}
    assert "x-request-id" not in r.headers and worker.received == []


def test_a_good_client_request_id_names_the_request(gateway: GatewayServer, worker: ScriptedWorker) -> None:
    rid = "bench-1.2:a_b-" + "9" * 100
    r = httpx.post(f"{gateway.url}/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 1}},
                   headers={"x-request-id": rid}, timeout=10)
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    assert worker.received[0].req_id == rid


def test_a_head_trickled_byte_by_byte_gets_408(make_gateway) -> None:  # type: ignore[no-untyped-def]
    # Slowloris: each byte resets uvicorn's keep-alive timer, so a trickled head held its
    # connection for as long as the client liked.
    with make_gateway(header_read_timeout=1.0) as gw:
        sock = socket.create_connection(("127.0.0.1", gw.config.port), timeout=10)
        try:
            started = time.monotonic()
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n")
            sock.settimeout(0.2)
            head = b""
            while b"\r\n\r\n" not in head and time.monotonic() - started < 5:
                try:
                    sock.sendall(b"x")  # one more byte of a header that never ends
                    head += sock.recv(65536)
                except (socket.timeout, TimeoutError):
                    continue
                except OSError:
                    break
            assert head.startswith(b"HTTP/1.1 408 "), head
            assert 1.0 <= time.monotonic() - started < 3.0
            sock.settimeout(5)
            while chunk := sock.recv(65536):  # the rest of the answer, then the close
                head += chunk
            assert json.loads(head.partition(b"\r\n\r\n")[2]) == {
                "error": "Request head not received within 1 s", "error_type": "request_timeout"}
        finally:
            sock.close()
        assert httpx.get(f"{gw.url}/health", timeout=5).status_code == 200  # a prompt head is served
