"""The check both Redis failover tests make: kill the primary under 20 open streams, then every
stream completes or ends with an explicit error, service comes back through the same processes,
and the times to promotion and to service are printed (docs/reliability.md quotes them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tests.integration.fleet import FleetProcesses
from tests.reliability.harness import StreamResult, run_streams, service_back_at, summarize, wait_workers_running

__all__ = ["primary_killed_under_streams"]

NUM_STREAMS = 20


def primary_killed_under_streams(name: str, fleet: FleetProcesses, kill: Callable[[], None],
                                 promoted: Callable[[], bool], cluster: bool = False) -> None:
    out: list[StreamResult] = []
    prompts = [f"open {i}" for i in range(NUM_STREAMS)]
    client = threading.Thread(target=lambda: out.extend(run_streams(fleet.base_url, prompts, 100, timeout=90)),
                              daemon=True)
    client.start()
    wait_workers_running(fleet.redis_url, fleet.prefix, at_least=1, timeout=20, cluster=cluster)
    kill()
    killed_at = time.monotonic()
    deadline = time.monotonic() + 30
    while not promoted():
        assert time.monotonic() < deadline, "no replica promoted within 30 s"
        time.sleep(0.05)
    promoted_at = time.monotonic()

    client.join(90)
    assert not client.is_alive(), "open streams still hanging after the failover"
    counts = summarize(f"{name}: {NUM_STREAMS} open streams", out)
    assert all(r.completed or r.error_type for r in out), [
        (r.status, r.exception, len(r.token_ids)) for r in out if not (r.completed or r.error_type)]
    assert counts["lost_tokens"] == counts["duplicated_tokens"] == 0

    served_at = service_back_at(fleet.base_url, timeout=30)
    print(f"[{name}] replica promoted {promoted_at - killed_at:.1f}s after kill -9 of the primary; "
          f"service back (5 /generate in a row) {served_at - killed_at:.1f}s after it")
    after = run_streams(fleet.base_url, [f"after {i}" for i in range(10)], 20)
    assert summarize(f"{name}: new streams", after)["completed"] == 10
    assert all(p.poll() is None for p in fleet.workers + fleet.gateways), "a genfleet process had to restart"
