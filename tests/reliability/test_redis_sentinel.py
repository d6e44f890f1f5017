"""The fleet behind Redis Sentinel (--redis-url redis+sentinel://...): kill -9 the primary with 20
streams open. Every stream completes or ends with an explicit error (each counted), the sentinels
promote the replica, and gateway and workers find it by themselves: service is back without
restarting any genfleet process. The time to recover goes to docs/reliability.md."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from genfleet.embedded_redis import RedisBinaryNotFound
from load.redis_topology import LocalSentinels, wait_for
from tests.integration.fleet import FleetProcesses
from tests.reliability.harness import StreamResult, run_streams, summarize, wait_workers_running

BODY = {"inputs": "ping", "parameters": {"max_new_tokens": 5}}
WORKER_ARGS = ("--synthetic-tokens-per-s", "20", "--max-batch-total-tokens", "65536")


@pytest.fixture
def sentinels() -> Iterator[LocalSentinels]:
    try:
        topology = LocalSentinels(down_after_ms=1000)
    except RedisBinaryNotFound as exc:
        pytest.skip(str(exc))
    with topology:
        yield topology


def test_primary_killed_with_20_streams_open(sentinels: LocalSentinels) -> None:
    fleet = FleetProcesses(sentinels.url, f"rs{uuid.uuid4().hex[:6]}")
    try:
        fleet.start(num_workers=1, worker_args=WORKER_ARGS)
        out: list[StreamResult] = []
        client = threading.Thread(
            target=lambda: out.extend(run_streams(fleet.base_url, [f"open {i}" for i in range(20)], 100, timeout=90)),
            daemon=True)
        client.start()
        wait_workers_running(sentinels.url, fleet.prefix, at_least=1, timeout=20)
        old_primary = sentinels.primary.port
        sentinels.primary.kill()
        killed_at = time.monotonic()

        wait_for("a sentinel promoting the replica", lambda: sentinels.master_port() != old_primary, 30)
        promoted_at = time.monotonic()
        client.join(90)
        assert not client.is_alive(), "open streams still hanging after the failover"
        counts = summarize("sentinel failover: 20 open streams", out)
        assert all(r.completed or r.error_type for r in out), [
            (r.status, r.exception, len(r.token_ids)) for r in out if not (r.completed or r.error_type)]
        assert counts["lost_tokens"] == counts["duplicated_tokens"] == 0

        # Service back on the promoted replica, through the same processes.
        served_at = _first_of_5_in_a_row(fleet.base_url, timeout=30)
        print(f"[sentinel failover] replica promoted {promoted_at - killed_at:.1f}s after kill -9 of the primary; "
              f"service back (5 /generate in a row) {served_at - killed_at:.1f}s after it")
        after = run_streams(fleet.base_url, [f"after {i}" for i in range(10)], 20)
        assert summarize("sentinel failover: new streams", after)["completed"] == 10
        assert all(p.poll() is None for p in fleet.workers + fleet.gateways)
    finally:
        fleet.stop()


def _first_of_5_in_a_row(base: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    ok, first = 0, 0.0
    while time.monotonic() < deadline and ok < 5:
        r = httpx.post(f"{base}/generate", json=BODY, timeout=10)
        if r.status_code == 200:
            first = first or time.monotonic()
            ok += 1
        else:
            ok, first = 0, 0.0
            time.sleep(0.2)
    assert ok == 5, "service not back on the promoted replica"
    return first
