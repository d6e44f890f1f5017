"""Resumes at the issue's scale, on synthetic workers (what is tested is the relay, the journal
and adoption, not the model): 50 streams across a gateway's kill -9, and two gateways adopting
one request at the same moment, both of whose clients must get it to its end."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from common.streams import Keys
from common.redis_clients import sync_client
from tests.integration.fleet import wait_healthy
from tests.reliability.harness import ResumedStream, resumed_stream, tgi_events, wait_workers_idle, worker_counter
from tests.reliability.resume_fleet import ADMITTED, Fleet, synthetic_fleet

STREAMS = 50
TOKENS = 200  # 4 s at 50 tokens/s


@pytest.fixture(scope="module")
def fleet(redis_server) -> Iterator[Fleet]:  # type: ignore[no-untyped-def]
    f = synthetic_fleet(redis_server.url, 2, "20", {"d": (), "e": (), "f": ()})
    yield f
    f.stop()


def _restart(fleet: Fleet, name: str) -> None:
    fleet.procs[name].wait()
    fleet.gateway(name)
    wait_healthy(fleet.url(name), list(fleet.procs.values()), timeout=60)


def _wait_gateway_gone(fleet: Fleet, name: str, timeout: float = 10.0) -> None:
    """Until the killed gateway's heartbeat has expired: a resume then adopts at once."""
    client = sync_client(fleet.redis_url)
    key = Keys(fleet.prefix).gateway_heartbeat(f"{fleet.prefix}-{name}")
    deadline = time.monotonic() + timeout
    try:
        while client.exists(key):
            assert time.monotonic() < deadline, f"{key} still there after {timeout}s"
            time.sleep(0.05)
    finally:
        client.close()


def test_50_streams_across_a_gateway_kill(fleet: Fleet) -> None:
    before = worker_counter(fleet.metrics_ports, ADMITTED)
    streams = [ResumedStream(f"scale {i}", f"s50-{uuid.uuid4().hex[:8]}-{i}") for i in range(STREAMS)]
    victims = streams[::2]  # on the gateway that is killed; they reconnect to e

    async def main() -> None:
        limits = httpx.Limits(max_connections=2 * STREAMS, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            tasks = [asyncio.ensure_future(resumed_stream(
                client, [fleet.url("d"), fleet.url("e")] if i % 2 == 0 else [fleet.url("f")], s, TOKENS,
                deadline_s=150)) for i, s in enumerate(streams)]
            await asyncio.wait_for(asyncio.gather(*(v.tokens_seen.wait() for v in victims)), timeout=90)
            fleet.procs["d"].kill()  # SIGKILL, mid-stream
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=150)

    started = time.monotonic()
    try:
        asyncio.run(main())
    finally:
        _restart(fleet, "d")
    for s in streams:
        assert s.error is None, (s.request_id, s.error)
        assert s.seqs == list(range(TOKENS)), (s.request_id, s.seqs)  # no gap, no duplicate
        assert s.generated_text == s.text
    resumed = sum(1 for v in victims if v.reconnects)
    assert resumed == len(victims), f"{resumed} of {len(victims)} streams of the killed gateway reconnected"
    wait_workers_idle(fleet.redis_url, fleet.prefix, expect=2, timeout=30)
    assert worker_counter(fleet.metrics_ports, ADMITTED) - before == STREAMS  # each generated once
    print(f"[50 streams] {resumed} streams of the killed gateway resumed through another; all {STREAMS} "
          f"complete, {time.monotonic() - started:.1f}s")


async def _tail(client: httpx.AsyncClient, method: str, url: str, rid: str, last: str,
                body: dict[str, object]) -> list[tuple[str, dict[str, object]]]:
    """A resume after `last`, to the stream's end: (event id, event) of every event."""
    headers = {"Last-Event-ID": last, "Accept": "text/event-stream", "x-request-id": rid}
    events = []
    async with client.stream(method, url, json=body if method == "POST" else None, headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        async for event_id, event in tgi_events(r):
            assert "error" not in event, event
            events.append((event_id or "", event))
    return events


def test_two_gateways_adopting_one_request_at_once_both_stream_it_to_the_end(fleet: Fleet) -> None:
    before = worker_counter(fleet.metrics_ports, ADMITTED)
    tokens = 300  # 6 s: the requests run on well past both adoptions
    rids = [f"two-{uuid.uuid4().hex[:8]}-{i}" for i in range(4)]
    bodies = [{"inputs": f"twice {i}", "parameters": {"max_new_tokens": tokens, "details": True}} for i in range(4)]
    heads: dict[str, list[tuple[str, dict[str, object]]]] = {rid: [] for rid in rids}

    async def head(client: httpx.AsyncClient, rid: str, body: dict[str, object]) -> None:
        try:
            async with client.stream("POST", f"{fleet.url('d')}/generate_stream", json=body,
                                     headers={"x-request-id": rid}) as r:
                async for event_id, event in tgi_events(r):
                    heads[rid].append((event_id or "", event))
        except httpx.HTTPError:
            pass  # the gateway was killed

    async def main() -> list[tuple[list[tuple[str, dict[str, object]]], list[tuple[str, dict[str, object]]]]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            tasks = [asyncio.ensure_future(head(client, rid, body)) for rid, body in zip(rids, bodies)]
            deadline = time.monotonic() + 30
            while min(len(h) for h in heads.values()) < 5:
                assert time.monotonic() < deadline, {r: len(h) for r, h in heads.items()}
                await asyncio.sleep(0.05)
            fleet.procs["d"].kill()
            await asyncio.gather(*tasks)
            await asyncio.to_thread(_wait_gateway_gone, fleet, "d")
            # Each request resumed through e (POST) and f (GET) at the same moment: both adopt it.
            pairs = []
            for rid, body in zip(rids, bodies):
                last = heads[rid][-1][0]
                pairs.append(asyncio.gather(
                    _tail(client, "POST", f"{fleet.url('e')}/generate_stream", rid, last, body),
                    _tail(client, "GET", f"{fleet.url('f')}/generate_stream/{rid}", rid, last, body)))
            return list(await asyncio.wait_for(asyncio.gather(*pairs), timeout=60))

    try:
        tails = asyncio.run(main())
    finally:
        _restart(fleet, "d")
    for rid, (by_post, by_get) in zip(rids, tails):
        seen = heads[rid]
        assert 5 <= len(seen) < tokens
        for tail in (by_post, by_get):
            assert [e for e, _ in seen + tail] == [f"{rid}:{seq}" for seq in range(tokens)], rid
            text = "".join(str(ev["token"]["text"]) for _, ev in seen + tail)  # type: ignore[index]
            assert tail[-1][1]["generated_text"] == text
        assert [ev["token"] for _, ev in by_post] == [ev["token"] for _, ev in by_get]
    wait_workers_idle(fleet.redis_url, fleet.prefix, expect=2, timeout=30)
    assert worker_counter(fleet.metrics_ports, ADMITTED) - before == len(rids)
