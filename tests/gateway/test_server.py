"""gateway.server.run as a real process: SIGTERM drains (open streams finish, /health says 503), then exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from genfleet.embedded_redis import free_port
from tests.gateway.harness import ScriptedWorker, register_markers

pytestmark = pytest.mark.timeout(120)


@contextmanager
def _gateway(redis_url: str, key_prefix: str, grace: float) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A gateway process, healthy; killed at the end if it has not exited by then."""
    proc, url = _start(redis_url, key_prefix, grace)
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _exited_cleanly(proc: subprocess.Popen[bytes]) -> bool:
    # uvicorn re-raises the signal once it has shut down, so the exit status names SIGTERM.
    return proc.wait(timeout=20) in (0, -signal.SIGTERM) and b"Traceback" not in proc.stderr.read()  # type: ignore[union-attr]


def _start(redis_url: str, key_prefix: str, grace: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--redis-url", redis_url, "--key-prefix", key_prefix, "--hostname",
         "127.0.0.1", "--port", str(port), "--heartbeat-interval", "0.2", "--graceful-termination-timeout",
         str(grace)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "gateway did not become healthy"
        time.sleep(0.1)


def test_sigterm_drains_open_streams(redis_url: str, key_prefix: str, worker: ScriptedWorker,
                                     default_model_dir) -> None:  # type: ignore[no-untyped-def]
    from gateway.tokenizer import Tokenizer

    register_markers(Tokenizer(default_model_dir))
    with _gateway(redis_url, key_prefix, grace=20) as (proc, url):
        texts = []
        with httpx.stream("POST", f"{url}/generate_stream", json={
                "inputs": "go SLOW", "parameters": {"max_new_tokens": 5}}, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    texts.append(event["token"]["text"])
                    if len(texts) == 1:
                        os.kill(proc.pid, signal.SIGTERM)
        assert texts == [f" w{i}" for i in range(5)]
        assert _exited_cleanly(proc)


def test_drain_answers_503_then_cuts_streams_with_an_error_event(redis_url: str, key_prefix: str,
                                                                 worker: ScriptedWorker,
                                                                 default_model_dir) -> None:  # type: ignore[no-untyped-def]
    # Issue 13.8: /health was refused during the drain, and at its end streams were cut with no
    # final or error event.
    from gateway.tokenizer import Tokenizer

    register_markers(Tokenizer(default_model_dir))
    bodies: dict[str, bytes] = {}

    def stream(name: str, path: str, body: dict) -> None:  # type: ignore[type-arg]
        with httpx.stream("POST", f"{url}{path}", json=body, timeout=30) as r:
            bodies[name] = r.read()

    threads = [
        threading.Thread(target=stream, args=("tgi", "/generate_stream", {"inputs": "a HANG", "parameters": {
            "max_new_tokens": 5}})),
        threading.Thread(target=stream, args=("openai", "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "a HANG"}], "max_tokens": 5, "stream": True})),
    ]
    with _gateway(redis_url, key_prefix, grace=2.0) as (proc, url):
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(worker.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(worker.received) == 2, bodies
        os.kill(proc.pid, signal.SIGTERM)
        health = httpx.get(f"{url}/health", timeout=2)  # answered, not refused
        assert health.status_code == 503 and health.json() == {"error": "unhealthy", "error_type": "healthcheck"}
        r = httpx.post(f"{url}/generate", json={"inputs": "x"}, timeout=5)
        assert r.status_code == 503 and r.json()["error_type"] == "unavailable"
        for t in threads:
            t.join(timeout=15)
        assert bodies["tgi"] == (b'data:{"error":"The gateway is shutting down","error_type":"unavailable"}\n\n')
        event = json.loads(bodies["openai"].decode().removeprefix("data: "))
        assert event == {"error": {"message": "The gateway is shutting down", "type": "unavailable",
                                   "http_status_code": 503}}
        assert _exited_cleanly(proc)
