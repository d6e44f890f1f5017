"""Clients, gateways and deadlines failing around a fleet of three synthetic workers (50 tokens/s
per stream, no model), so the high-count cases stay quick on two CPU cores. Every case asserts on
what each client received and on the workers' own load counters afterwards."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from common.config import DEFAULT_MODEL_ID
from common.streams import CONSUMER_GROUP, Keys
from genfleet.embedded_redis import free_port
from tests.integration.fleet import FleetProcesses, start_gateway, start_worker, wait_healthy
from tests.reliability.harness import run_streams, summarize, wait_workers_idle, wait_workers_running

RATE = "50"
# A gone gateway's requests are cancelled after a 1 s grace period here (30 s by default, for a
# client to resume elsewhere: tests/reliability/test_resume.py).
WORKER_ARGS = ("--synthetic-tokens-per-s", RATE, "--max-batch-total-tokens", "65536", "--gateway-grace-period", "1")


@pytest.fixture(scope="module")
def fleet(redis_server) -> Iterator[FleetProcesses]:  # type: ignore[no-untyped-def]
    processes = FleetProcesses(redis_server.url, f"rf{uuid.uuid4().hex[:6]}").start(
        num_workers=3, worker_args=WORKER_ARGS, gateway_args=("--max-concurrent-requests", "256"),
    )
    wait_workers_idle(processes.redis_url, processes.prefix, expect=3, timeout=60)
    yield processes
    processes.stop()


def _extra_gateway(fleet: FleetProcesses, name: str, *args: str) -> tuple[str, object]:
    port = free_port()
    proc = start_gateway(fleet.redis_url, fleet.prefix, port, f"{fleet.prefix}-{name}", *args)
    fleet.gateways.append(proc)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base, [proc], timeout=60)
    return base, proc


def test_200_clients_disconnect_mid_stream(fleet: FleetProcesses) -> None:
    prompts = [f"client {i} asks about item {i}" for i in range(200)]
    results = run_streams(fleet.base_url, prompts, 200, disconnect_after=3)
    counts = summarize("200 disconnects", results)
    assert counts["disconnected"] == 200, [r for r in results if not r.disconnected][:3]
    assert counts["lost_tokens"] == counts["duplicated_tokens"] == 0
    started = time.monotonic()
    # Left running, each would stream for 4 s more; cancelled, every worker is empty at once.
    infos = wait_workers_idle(fleet.redis_url, fleet.prefix, expect=3, timeout=3)
    print(f"[200 disconnects] all workers idle {time.monotonic() - started:.2f}s after the last client left; "
          f"free/capacity = {[(w.free_kv_tokens, w.capacity_tokens) for w in infos]}")


def test_deadline_and_overload(fleet: FleetProcesses) -> None:
    base, _ = _extra_gateway(fleet, "g1", "--request-timeout", "1.5", "--max-concurrent-requests", "10")
    # 200 tokens at 50/s need 4 s: the 1.5 s deadline ends them with a clear error.
    started = time.monotonic()
    late = run_streams(base, [f"slow {i}" for i in range(5)], 200)
    elapsed = time.monotonic() - started
    counts = summarize("deadline", late)
    assert counts["error:timeout"] == 5 and elapsed < 5, (counts, elapsed)
    assert all(r.token_ids and r.lost == 0 and r.duplicated == 0 for r in late)
    wait_workers_idle(fleet.redis_url, fleet.prefix, expect=3, timeout=5)

    # Twice the gateway's concurrency limit at once: the excess gets 429 + Retry-After, promptly.
    burst = run_streams(base, [f"burst {i}" for i in range(20)], 20)
    counts = summarize("2x max-concurrent-requests", burst)
    refused = [r for r in burst if r.status == 429]
    assert len(refused) >= 10 and all(r.retry_after for r in refused)
    assert counts["completed"] + len(refused) == 20 and counts["completed"] >= 1


def test_gateway_kill_cancels_its_requests(fleet: FleetProcesses) -> None:
    base, proc = _extra_gateway(fleet, "g2", "--max-concurrent-requests", "64")
    out: list[object] = []
    client = threading.Thread(target=lambda: out.extend(run_streams(base, [f"orphan {i}" for i in range(30)], 500)),
                              daemon=True)
    client.start()
    wait_workers_running(fleet.redis_url, fleet.prefix, 30)
    proc.kill()  # type: ignore[attr-defined]
    killed = time.monotonic()
    client.join(10)
    assert not client.is_alive()
    # The workers notice the gateway's heartbeat expiring (TTL 2 s), give its 30 requests the
    # grace period (1 s) and drop them.
    wait_workers_idle(fleet.redis_url, fleet.prefix, expect=3, timeout=8)
    print(f"[gateway kill -9] 30 requests cancelled on the workers {time.monotonic() - killed:.2f}s after the kill")


def test_gateway_sigterm_finishes_open_streams(fleet: FleetProcesses) -> None:
    base, proc = _extra_gateway(fleet, "g3", "--graceful-termination-timeout", "10")
    out: list[object] = []
    client = threading.Thread(target=lambda: out.extend(run_streams(base, [f"drain {i}" for i in range(10)], 60)),
                              daemon=True)
    client.start()
    wait_workers_running(fleet.redis_url, fleet.prefix, 10)
    proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    signalled = time.monotonic()
    client.join(15)
    counts = summarize("gateway SIGTERM", out)  # type: ignore[arg-type]
    assert counts["completed"] == 10, out
    # uvicorn re-raises the captured SIGTERM once its graceful shutdown is over.
    assert proc.wait(15) in (0, -signal.SIGTERM)  # type: ignore[attr-defined]
    assert time.monotonic() - signalled < 10 + 3


def test_dead_letter_after_max_deliveries(redis_server) -> None:  # type: ignore[no-untyped-def]
    prefix = f"rd{uuid.uuid4().hex[:6]}"
    keys = Keys(prefix)
    stream = keys.request_stream(DEFAULT_MODEL_ID)
    port = free_port()
    gateway = start_gateway(redis_server.url, prefix, port, f"{prefix}-g0", "--request-timeout", "60")
    worker = None
    r = redis.Redis.from_url(redis_server.url)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_started(base, gateway)
        out: list[object] = []
        client = threading.Thread(target=lambda: out.extend(run_streams(base, ["poison"], 10)), daemon=True)
        client.start()
        entries = None
        deadline = time.monotonic() + 10
        while not entries and time.monotonic() < deadline:
            # A consumer that reads the entry and dies before accepting it (it never heartbeats).
            entries = r.xreadgroup(CONSUMER_GROUP, "ghost", {stream: ">"}, count=1, block=200) if r.exists(stream) else None
        assert entries, "the gateway never queued the request"
        worker = start_worker(redis_server.url, prefix, f"{prefix}-w0", *WORKER_ARGS, "--max-deliveries", "1")
        client.join(30)
        counts = summarize("dead letter", out)  # type: ignore[arg-type]
        assert counts["error:dead_letter"] == 1, out
        assert r.xlen(keys.dead_letter_stream(DEFAULT_MODEL_ID)) == 1
        assert r.xpending(stream, CONSUMER_GROUP)["pending"] == 0
    finally:
        for p in (gateway, worker):
            if p is not None:
                p.kill()
                p.wait()
        r.close()


def _wait_started(base: str, proc: object, timeout: float = 60) -> None:
    # No worker yet, so /health stays 503: wait for /info instead.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None  # type: ignore[attr-defined]
        try:
            if httpx.get(f"{base}/info", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(base)


def test_no_worker_at_all_gives_an_error_not_a_hang(redis_server) -> None:  # type: ignore[no-untyped-def]
    prefix = f"rn{uuid.uuid4().hex[:6]}"
    port = free_port()
    # No --request-timeout: the bound is ten heartbeat TTLs of seeing no worker (here 10 x 0.5 s).
    gateway = start_gateway(redis_server.url, prefix, port, f"{prefix}-g0", "--heartbeat-interval", "0.2",
                            "--heartbeat-ttl", "0.5")
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_started(base, gateway)
        started = time.monotonic()
        results = run_streams(base, ["anyone there?"], 10, timeout=30)
        elapsed = time.monotonic() - started
        counts = summarize("no worker", results)
        assert counts["error:unavailable"] == 1, results
        assert 4 < elapsed < 15, elapsed
        # ...and its entry left the backlog, so a worker starting later does not run it for nobody.
        r = redis.Redis.from_url(redis_server.url)
        deadline = time.monotonic() + 5
        while r.xlen(Keys(prefix).request_stream(DEFAULT_MODEL_ID)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.xlen(Keys(prefix).request_stream(DEFAULT_MODEL_ID)) == 0
        r.close()
    finally:
        gateway.kill()
        gateway.wait()
