"""A gateway starved of CPU for longer than its Redis socket timeout loses no request.

What issue 13 saw as one 503 in a burst on a busy two-core machine: the gateway's process got no
CPU for seconds while an XADD was in flight; when it ran again, Redis's reply was waiting in the
socket but the 5 s timeout fired first, and the client got "Request queue unavailable". Here it
is made exact: CLIENT PAUSE holds Redis's replies for a second, so the gateway's commands are
surely in flight, and SIGSTOP of the gateway for 6 s in that second is the starvation.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections import Counter

import httpx
import redis

from tests.integration.fleet import FleetProcesses

STALL_S = 6.0  # past the gateway's 5 s Redis socket timeout


async def _steady_traffic(base: str, seconds: float, out: list[tuple[int, str]]) -> None:
    """A new request every 5 ms for `seconds`, so some XADD is always in flight."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def one(i: int) -> None:
            try:
                r = await client.post(f"{base}/generate", json={"inputs": f"hello {i}", "parameters": {"max_new_tokens": 2}})
                out.append((r.status_code, r.text[:200]))
            except httpx.HTTPError as exc:
                out.append((-1, repr(exc)))

        tasks = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tasks.append(asyncio.create_task(one(len(tasks))))
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)


def test_gateway_stalled_past_the_redis_timeout_answers_every_request(redis_server) -> None:  # type: ignore[no-untyped-def]
    fleet = FleetProcesses(redis_server.url, f"rs{uuid.uuid4().hex[:6]}").start(
        num_workers=1, worker_args=("--synthetic-tokens-per-s", "50"),
        gateway_args=("--max-concurrent-requests", "1024"),
    )
    try:
        gateway = fleet.gateways[0]
        out: list[tuple[int, str]] = []
        client = threading.Thread(target=lambda: asyncio.run(_steady_traffic(fleet.base_url, 3.0, out)), daemon=True)
        client.start()
        deadline = time.monotonic() + 10
        while len(out) < 20 and time.monotonic() < deadline:  # traffic flows before the stall
            time.sleep(0.05)
        with redis.Redis.from_url(redis_server.url) as admin:
            admin.execute_command("CLIENT", "PAUSE", 1000, "ALL")  # commands wait, none fails
        time.sleep(0.5)  # half-way through the pause: the gateway's commands wait for their replies
        os.kill(gateway.pid, signal.SIGSTOP)
        time.sleep(STALL_S)  # the stall itself, not a wait for a condition
        os.kill(gateway.pid, signal.SIGCONT)
        client.join(60)
        assert not client.is_alive()
        counts = Counter(status for status, _ in out)
        print(f"[gateway stalled {STALL_S:.0f}s] {dict(counts)}")
        assert counts[200] == len(out), [body for status, body in out if status != 200][:5]
    finally:
        fleet.stop()
