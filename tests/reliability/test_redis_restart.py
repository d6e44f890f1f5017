"""Redis killed and restarted (without persistence) during traffic: 503 + Retry-After while it is
down, every open stream ends (completed or an explicit error), full service again after, with
no process restarted by hand."""

from __future__ import annotations

import threading
import time
import uuid

import httpx

from genfleet.embedded_redis import EmbeddedRedis
from tests.integration.fleet import FleetProcesses
from tests.reliability.harness import StreamResult, run_streams, summarize, wait_workers_idle, wait_workers_running

BODY = {"inputs": "ping", "parameters": {"max_new_tokens": 5}}
WORKER_ARGS = ("--synthetic-tokens-per-s", "50", "--max-batch-total-tokens", "65536")


def test_redis_restart_mid_load() -> None:
    server = EmbeddedRedis().start()
    fleet = FleetProcesses(server.url, f"rr{uuid.uuid4().hex[:6]}")
    try:
        fleet.start(num_workers=1, worker_args=WORKER_ARGS)
        out: list[StreamResult] = []
        client = threading.Thread(
            target=lambda: out.extend(run_streams(fleet.base_url, [f"open {i}" for i in range(20)], 250, timeout=60)),
            daemon=True)
        client.start()
        time.sleep(1.0)
        server.kill()
        down_at = time.monotonic()

        # While it is down: 503 with Retry-After, answered quickly rather than hanging.
        statuses = []
        for _ in range(5):
            t0 = time.monotonic()
            r = httpx.post(f"{fleet.base_url}/generate", json=BODY, timeout=10)
            statuses.append((r.status_code, r.headers.get("retry-after"), round(time.monotonic() - t0, 2)))
            time.sleep(0.3)
        print(f"[redis down] /generate answers: {statuses}")
        assert all(s == 503 and ra for s, ra, _ in statuses[1:]), statuses
        assert all(t < 6 for _, _, t in statuses), statuses

        server.start()  # same port, empty dataset: streams and the consumer group are gone
        back_at = time.monotonic()
        client.join(60)
        assert not client.is_alive(), "open streams still hanging after Redis came back"
        counts = summarize("redis restart: open streams", out)
        assert all(r.completed or r.error_type for r in out), [r for r in out if not (r.completed or r.error_type)]
        assert counts["lost_tokens"] == counts["duplicated_tokens"] == 0

        # Full service again within seconds, no process restarted.
        deadline = time.monotonic() + 20
        ok = 0
        while time.monotonic() < deadline and ok < 5:
            r = httpx.post(f"{fleet.base_url}/generate", json=BODY, timeout=10)
            ok = ok + 1 if r.status_code == 200 else 0
            if r.status_code != 200:
                time.sleep(0.3)
        print(f"[redis restart] service back {time.monotonic() - back_at:.1f}s after restart "
              f"({time.monotonic() - down_at:.1f}s after the kill)")
        assert ok == 5
        after = run_streams(fleet.base_url, [f"after {i}" for i in range(10)], 20)
        assert summarize("redis restart: new streams", after)["completed"] == 10
        assert all(p.poll() is None for p in fleet.workers + fleet.gateways)
        wait_workers_idle(server.url, fleet.prefix, expect=1, timeout=10)
    finally:
        fleet.stop()
        server.stop()


def test_streams_that_end_while_redis_is_down() -> None:
    """An outage shorter than the heartbeat TTL, inside which every stream's last tokens and finish
    were published to nobody: once pub/sub is back each stream is continued from what its client
    saw, rather than waiting for events that will never come (the owner never looked dead)."""
    server = EmbeddedRedis().start()
    fleet = FleetProcesses(server.url, f"re{uuid.uuid4().hex[:6]}")
    long_ttl = ("--heartbeat-ttl", "10")
    try:
        fleet.start(num_workers=1, worker_args=("--synthetic-tokens-per-s", "100", *long_ttl), gateway_args=long_ttl)
        out: list[StreamResult] = []
        client = threading.Thread(
            target=lambda: out.extend(run_streams(fleet.base_url, [f"short {i}" for i in range(8)], 100, timeout=30)),
            daemon=True)
        client.start()
        wait_workers_running(server.url, fleet.prefix, at_least=1, timeout=20)
        server.kill()
        # 100 tokens at 100 tok/s: long enough for a heartbeat to show them running (every 0.5 s),
        # short enough that every stream's end falls inside the outage.
        deadline, statuses = time.monotonic() + 2.5, []
        while time.monotonic() < deadline:
            statuses.append(httpx.post(f"{fleet.base_url}/generate", json=BODY, timeout=10).status_code)
        assert set(statuses[1:]) <= {503}, statuses
        server.start()
        client.join(30)
        assert not client.is_alive(), "streams still waiting for events published while Redis was down"
        counts = summarize("redis restart: streams ended during the outage", out)
        assert counts["completed"] == 8, [(len(r.token_ids), r.finish_reason, r.error_type) for r in out]
        assert counts["lost_tokens"] == counts["duplicated_tokens"] == 0
        assert all(len(r.token_ids) == 100 for r in out), [len(r.token_ids) for r in out]
    finally:
        fleet.stop()
        server.stop()
