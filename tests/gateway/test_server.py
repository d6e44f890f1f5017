"""gateway.server.run as a real process: SIGTERM lets an open stream finish, then the process exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from genfleet.embedded_redis import free_port
from tests.gateway.harness import ScriptedWorker, register_markers

pytestmark = pytest.mark.timeout(120)


def test_sigterm_drains_open_streams(redis_url: str, key_prefix: str, worker: ScriptedWorker,
                                     default_model_dir) -> None:  # type: ignore[no-untyped-def]
    from gateway.tokenizer import Tokenizer

    register_markers(Tokenizer(default_model_dir))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--redis-url", redis_url, "--key-prefix", key_prefix, "--hostname",
         "127.0.0.1", "--port", str(port), "--heartbeat-interval", "0.2", "--graceful-termination-timeout", "20"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gateway did not become healthy"
            time.sleep(0.1)
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
        # uvicorn re-raises the signal once it has shut down, so the exit status names SIGTERM.
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
        assert b"Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
