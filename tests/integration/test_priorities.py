"""Priorities through the fleet: a saturated worker pulls higher levels from Redis first.

One synthetic worker with four slots (50 tokens/s, 10 tokens a request: the slots free every 0.2 s)
gets 128 low-priority streams, then 8 high-priority ones. The high ones wait for the next free
slots, not behind the low backlog; bad priorities are refused in each route's shape."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.fleet import FleetProcesses

TOKENS = 10


@pytest.fixture(scope="module")
def fleet(redis_server) -> Iterator[FleetProcesses]:  # type: ignore[no-untyped-def]
    processes = FleetProcesses(redis_server.url, f"pr{uuid.uuid4().hex[:6]}").start(
        worker_args=("--synthetic-tokens-per-s", "50", "--max-batch-size", "4"),
        gateway_args=("--max-concurrent-requests", "256"))
    yield processes
    processes.stop()


async def _first_token(client: httpx.AsyncClient, base: str, priority: int) -> tuple[float, float]:
    """When the request was sent and when its first token came (monotonic seconds)."""
    body = {"inputs": "hello", "parameters": {"max_new_tokens": TOKENS, "priority": priority}}
    start = time.monotonic()
    first = 0.0
    async with client.stream("POST", f"{base}/generate_stream", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data:") and not first:
                first = time.monotonic()
    return start, first


async def _flood(base: str) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=192)) as client:
        low = [asyncio.ensure_future(_first_token(client, base, -1)) for _ in range(128)]
        await asyncio.sleep(0.5)  # the low backlog is queued and the slots are full
        high = await asyncio.gather(*(_first_token(client, base, 2) for _ in range(8)))
        return list(await asyncio.gather(*low)), list(high)


def test_high_priority_requests_pass_the_low_backlog(fleet: FleetProcesses) -> None:
    low, high = asyncio.run(_flood(fleet.base_url))
    ttft_low, ttft_high = (statistics.median(f - s for s, f in runs) for runs in (low, high))
    print(f"[priorities] TTFT p50 low {ttft_low:.2f}s, high {ttft_high:.2f}s ({ttft_high / ttft_low:.0%})")
    # An order, not a ratio of times (which a loaded machine stretches): every high request has
    # its first token before most of the low requests queued ahead of it have theirs.
    last_high = max(f for _, f in high)
    later = sum(f > last_high for _, f in low)
    assert later >= len(low) // 2, (later, sorted(f - s for s, f in high))


def test_a_priority_out_of_range_is_refused(fleet: FleetProcesses) -> None:
    base = fleet.base_url
    r = httpx.post(f"{base}/generate", json={"inputs": "hi", "parameters": {"priority": 3}}, timeout=10)
    assert r.status_code == 422 and r.json() == {"error": "Input validation error: `priority` must be >= -2 and <= 2. Given: 3",
                                                 "error_type": "validation"}
    r = httpx.post(f"{base}/generate", json={"inputs": "hi", "parameters": {"priority": "high"}}, timeout=10)
    assert r.status_code == 422 and "`priority` must be an integer" in r.json()["error"]
    r = httpx.post(f"{base}/v1/chat/completions", timeout=10,
                   json={"messages": [{"role": "user", "content": "hi"}], "priority": -3})
    assert r.status_code == 422 and "`priority`" in r.json()["error"]
    r = httpx.post(f"{base}/v1/chat/completions", timeout=30,
                   json={"messages": [{"role": "user", "content": "hi"}], "priority": 1, "max_tokens": 2})
    assert r.status_code == 200
