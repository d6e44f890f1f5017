"""How `genfleet serve` ends: kill -9 takes every child with it at once; Ctrl-C with streams open
stops the gateway, then the workers, then Redis, and the open streams finish normally.

The fleet runs a synthetic worker (20 tokens/s per stream, no model) so a stream stays open for a
few seconds at almost no CPU; the lifecycle is the same as with a real engine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from genfleet.embedded_redis import free_port
from tests.genfleet.test_serve import _alive, _descendants
from tests.integration.fleet import wait_healthy
from tests.reliability.harness import StreamResult, run_streams, summarize


@pytest.fixture
def serve(default_model_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    # A session of its own, as a shell gives a foreground job: killpg(SIGINT) is the terminal's Ctrl-C.
    proc = subprocess.Popen(
        [sys.executable, "-m", "genfleet", "serve", "--port", str(port), "--hostname", "127.0.0.1",
         "--synthetic-tokens-per-s", "20", "--key-prefix", "lifecycle", "--graceful-termination-timeout", "20"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, [proc], timeout=120)
        yield base, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _streams_in_background(base: str, n: int, max_new_tokens: int) -> tuple[threading.Thread, list[StreamResult]]:
    out: list[StreamResult] = []
    thread = threading.Thread(
        target=lambda: out.extend(run_streams(base, [f"stream {i}" for i in range(n)], max_new_tokens, timeout=60)),
        daemon=True,
    )
    thread.start()
    return thread, out


def _wait_streaming(base: str, n: int, timeout: float = 30) -> None:
    """Until the gateway reports `n` requests in flight (each has been queued and is streaming)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(f"{base}/metrics", timeout=2).text
        for line in text.splitlines():
            if line.startswith("genfleet_gateway_in_flight") and float(line.split()[-1]) >= n:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{n} streams never opened")


def test_kill_9_of_serve_takes_every_child_down_at_once(serve: tuple[str, subprocess.Popen[bytes]]) -> None:
    base, proc = serve
    thread, _ = _streams_in_background(base, 2, 1000)  # 50 s of work: a worker left alive would run on
    _wait_streaming(base, 2)
    children = _descendants(proc.pid)
    assert len(children) >= 3  # redis-compatible server, worker, gateway
    proc.kill()
    proc.wait()
    killed = time.monotonic()
    deadline = killed + 5
    while time.monotonic() < deadline and [pid for pid in children if _alive(pid)]:
        time.sleep(0.05)
    left = [pid for pid in children if _alive(pid)]
    assert not left, f"children still running 5 s after kill -9 of serve: {left}"
    print(f"[serve kill -9] every child gone {time.monotonic() - killed:.2f}s after the kill")
    thread.join(10)


def test_ctrl_c_with_streams_open_lets_them_finish(serve: tuple[str, subprocess.Popen[bytes]]) -> None:
    base, proc = serve
    thread, out = _streams_in_background(base, 4, 60)  # 3 s each at 20 tokens/s
    _wait_streaming(base, 4)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: the whole foreground group
    signalled = time.monotonic()
    thread.join(30)
    counts = summarize("serve Ctrl-C", out)
    assert counts["completed"] == 4, out
    assert all(len(r.token_ids) == 60 and r.finish_reason == "length" for r in out)
    assert counts["lost_tokens"] == counts["duplicated_tokens"] == 0
    assert proc.wait(30) == 0
    print(f"[serve Ctrl-C] 4 open streams finished; serve exited {time.monotonic() - signalled:.2f}s after SIGINT")
