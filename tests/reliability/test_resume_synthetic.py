"""Resuming streams and retrying by id around synthetic workers (50 tokens/s per stream, no model):
a restarted gateway, another API key, a reconnect after the grace period, and 20 retried calls.
The kill -9 case on the real model is tests/reliability/test_resume.py."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.fleet import wait_healthy
from tests.reliability.harness import (
    ResumedStream,
    resumed_stream,
    tgi_events,
    wait_workers_idle,
    wait_workers_running,
    worker_counter,
    worker_infos,
)
from tests.reliability.resume_fleet import ADMITTED, Fleet, synthetic_fleet as _fleet

KEY, OTHER_KEY = "key-one", "key-two"


@pytest.fixture(scope="module")
def fleet(redis_server) -> Iterator[Fleet]:  # type: ignore[no-untyped-def]
    keyed = ("--api-key", KEY)
    f = _fleet(redis_server.url, 2, "20", {"a": keyed, "b": keyed, "c": ("--api-key", OTHER_KEY)})
    yield f
    f.stop()


def _auth(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def _run(streams: list[tuple[list[str], ResumedStream]], max_new: int, during=None, **kw) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        tasks = [asyncio.ensure_future(resumed_stream(client, bases, res, max_new, **kw)) for bases, res in streams]
        if during is not None:
            await during()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=90)


def test_a_restarted_gateway_resumes_its_streams(fleet: Fleet) -> None:
    before = worker_counter(fleet.metrics_ports, ADMITTED)
    streams = [ResumedStream(f"restart {i}", f"rst-{uuid.uuid4().hex[:8]}-{i}") for i in range(6)]

    async def restart_mid_stream() -> None:
        await asyncio.wait_for(asyncio.gather(*(s.tokens_seen.wait() for s in streams)), timeout=30)
        fleet.procs["a"].kill()
        fleet.procs["a"].wait()
        fleet.gateway("a", "--api-key", KEY)  # the same id and port

    # 400 tokens take 8 s: the requests still run when the restarted gateway is up.
    asyncio.run(_run([([fleet.url("a")], s) for s in streams], 400, restart_mid_stream, headers=_auth()))
    for s in streams:
        assert s.error is None and s.reconnects >= 1, (s.request_id, s.error)
        assert s.seqs == list(range(400)) and s.generated_text == s.text
    wait_workers_idle(fleet.redis_url, fleet.prefix, expect=2, timeout=20)
    assert worker_counter(fleet.metrics_ports, ADMITTED) - before == 6


def test_another_api_key_cannot_attach(fleet: Fleet) -> None:
    stream = ResumedStream("mine", f"key-{uuid.uuid4().hex[:8]}")

    async def attach_with_other_key() -> None:
        await asyncio.wait_for(stream.tokens_seen.wait(), timeout=30)
        headers = {**_auth(OTHER_KEY), "x-request-id": stream.request_id, "Last-Event-ID": stream.last_event_id or ""}
        body = {"inputs": "mine", "parameters": {"max_new_tokens": 100, "details": True}}
        async with httpx.AsyncClient(timeout=10) as client:
            resumed = await client.post(f"{fleet.url('c')}/generate_stream", json=body, headers=headers)
            del headers["Last-Event-ID"]
            retried = await client.post(f"{fleet.url('c')}/generate", json=body, headers=headers)
        for r in (resumed, retried):
            assert r.status_code == 403, r.text
            assert r.json() == {"error": f"Request {stream.request_id} belongs to another API key",
                                "error_type": "forbidden"}

    asyncio.run(_run([([fleet.url("a")], stream)], 100, attach_with_other_key, headers=_auth()))
    assert stream.error is None and stream.seqs == list(range(100))


def test_retries_by_id_generate_once(fleet: Fleet) -> None:
    before = worker_counter(fleet.metrics_ports, ADMITTED)

    async def call(client: httpx.AsyncClient, i: int, gateway: str) -> tuple[int, dict[str, object]]:
        # Half name the request by x-request-id, half by Idempotency-Key; the retries of odd ones
        # go to the other gateway.
        header = "x-request-id" if i % 2 else "Idempotency-Key"
        body = {"inputs": f"retry {i}", "parameters": {"max_new_tokens": 40, "details": True, "do_sample": True}}
        r = await client.post(f"{fleet.url(gateway)}/generate", json=body,
                              headers={**_auth(), header: f"idem-{run_id}-{i}"})
        return r.status_code, r.json()

    async def main() -> list[tuple[int, dict[str, object]]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            first = [asyncio.ensure_future(call(client, i, "a")) for i in range(20)]
            await asyncio.sleep(0.3)  # the retries go out while the first calls run (40 tokens take 0.8 s)
            retries = [asyncio.ensure_future(call(client, i, "b" if i % 2 else "a")) for i in range(20)]
            return list(await asyncio.gather(*first, *retries))

    run_id = uuid.uuid4().hex[:8]
    answers = asyncio.run(main())
    assert all(status == 200 for status, _ in answers), answers
    for i in range(20):
        # Sampled without a seed: only one generation can give both calls the same tokens.
        assert answers[i] == answers[20 + i]
    assert len({str(a[1]["generated_text"]) for a in answers}) == 20
    wait_workers_idle(fleet.redis_url, fleet.prefix, expect=2, timeout=20)
    assert worker_counter(fleet.metrics_ports, ADMITTED) - before == 20


def test_reconnects_after_the_grace_period_or_a_disconnect_are_gone(redis_server) -> None:  # type: ignore[no-untyped-def]
    fleet = _fleet(redis_server.url, 1, "1", {"d": (), "e": ()})
    try:
        orphan = ResumedStream("orphan", f"late-{uuid.uuid4().hex[:8]}")
        grace_over = asyncio.Event()

        async def kill_then_wait_out_the_grace() -> None:
            await asyncio.wait_for(orphan.tokens_seen.wait(), timeout=30)
            wait_workers_running(fleet.redis_url, fleet.prefix, 1, timeout=10)  # its heartbeat shows it
            fleet.procs["d"].kill()
            started = time.monotonic()
            # Heartbeat TTL (2 s) + grace (1 s): the worker cancels the orphan, and is idle.
            wait_workers_idle(fleet.redis_url, fleet.prefix, expect=1, timeout=15)
            print(f"[grace] the orphan was cancelled {time.monotonic() - started:.1f}s after its gateway died")
            grace_over.set()

        asyncio.run(_run([([fleet.url("d"), fleet.url("e")], orphan)], 2000, kill_then_wait_out_the_grace,
                         reconnect_when=grace_over))
        assert orphan.error == (410, "request_gone") and orphan.reconnects == 1, orphan.error

        # A client that disconnects from a live gateway cancels its request at once, as before; a
        # reconnect is told so.
        rid = f"left-{uuid.uuid4().hex[:8]}"
        last = None
        body = {"inputs": "left", "parameters": {"max_new_tokens": 2000}}
        with httpx.stream("POST", f"{fleet.url('e')}/generate_stream", json=body, headers={"x-request-id": rid}) as r:
            for line in r.iter_lines():
                if line.startswith("id:"):
                    last = line[3:]
                    if int(last.rsplit(":", 1)[1]) >= 2:
                        break
        wait_workers_idle(fleet.redis_url, fleet.prefix, expect=1, timeout=5)
        r = httpx.post(f"{fleet.url('e')}/generate_stream", json=body, headers={"Last-Event-ID": last or ""})
        assert r.status_code == 410 and r.json()["error_type"] == "request_gone", r.text
        body = {"inputs": "x", "parameters": {"max_new_tokens": 5}}
        r = httpx.post(f"{fleet.url('e')}/generate_stream", json=body, headers={"Last-Event-ID": "never-seen:3"})
        assert r.status_code == 404 and r.json()["error_type"] == "unknown_request", r.text
    finally:
        fleet.stop()


def test_an_openai_stream_resumes_through_another_gateway(fleet: Fleet) -> None:
    key = f"oai-{uuid.uuid4().hex[:8]}"
    body = {"model": "tgi", "messages": [{"role": "user", "content": "go on"}], "max_tokens": 100, "stream": True}
    first: list[tuple[str, str]] = []  # (id line, content) of each token chunk
    seen_three = asyncio.Event()

    async def read(client: httpx.AsyncClient, url: str, headers: dict[str, str], out: list[tuple[str, str]],
                   signal: asyncio.Event | None = None) -> bool:
        event_id = None
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if line.startswith("id:"):
                    event_id = line[3:]
                elif line == "data: [DONE]":
                    return True
                elif line.startswith("data: "):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    if event_id is not None:
                        out.append((event_id, delta.get("content", "")))
                    event_id = None
                    if signal is not None and len(out) >= 3:
                        signal.set()
        return False

    async def main() -> tuple[bool, bool, list[tuple[str, str]]]:
        async with httpx.AsyncClient(timeout=30) as client:
            whole = asyncio.ensure_future(read(client, fleet.url("a"), {**_auth(), "Idempotency-Key": key}, first,
                                               seen_three))
            await asyncio.wait_for(seen_three.wait(), timeout=30)
            resumed: list[tuple[str, str]] = []
            last = first[2][0]
            done = await read(client, fleet.url("b"), {**_auth(), "Last-Event-ID": last}, resumed)
            return await whole, done, resumed

    whole_done, resumed_done, resumed = asyncio.run(main())
    assert whole_done and resumed_done
    assert [i for i, _ in first] == [f"{key}:{seq}" for seq in range(100)]
    # The second client gets exactly what the first got after seq 2, and the same [DONE].
    assert resumed == first[3:]


async def _event_source(client: httpx.AsyncClient, url: str, last_event_id: str | None,
                        events: list[tuple[str, dict[str, object]]], headers: dict[str, str]) -> int:
    """What a browser's EventSource does: GET with Accept: text/event-stream and, when it has one,
    the Last-Event-ID of the last event it received; every event read is added to `events`."""
    h = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **headers}
    if last_event_id is not None:
        h["Last-Event-ID"] = last_event_id
    async with client.stream("GET", url, headers=h) as r:
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("text/event-stream")
            async for event_id, event in tgi_events(r):
                assert event_id is not None, event  # every event has an id for EventSource to send back
                events.append((event_id, event))
        return r.status_code


def test_an_event_source_reconnects_by_get_after_its_gateway_is_killed(fleet: Fleet) -> None:
    before = worker_counter(fleet.metrics_ports, ADMITTED)
    rid = f"es-{uuid.uuid4().hex[:8]}"
    body = {"inputs": "event source", "parameters": {"max_new_tokens": 150, "details": True}}
    first: list[tuple[str, dict[str, object]]] = []
    resumed: list[tuple[str, dict[str, object]]] = []

    async def main() -> tuple[int, int, int]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            try:
                async with client.stream("POST", f"{fleet.url('a')}/generate_stream", json=body,
                                         headers={**_auth(), "x-request-id": rid}) as r:
                    async for event_id, event in tgi_events(r):
                        first.append((event_id or "", event))
                        if len(first) == 5:
                            fleet.procs["a"].kill()  # mid-stream: 150 tokens take 3 s
            except httpx.HTTPError:
                pass
            url = f"{fleet.url('b')}/generate_stream/{rid}"
            status = await _event_source(client, url, first[-1][0], resumed, _auth())
            # EventSource reconnects when a stream ends; the id of the last event says it has all.
            again = await _event_source(client, url, resumed[-1][0], [], _auth())
            whole: list[tuple[str, dict[str, object]]] = []
            replayed = await _event_source(client, url, None, whole, _auth())
            assert [e for e, _ in whole] == [e for e, _ in first + resumed]
            return status, again, replayed

    try:
        status, again, replayed = asyncio.run(main())
    finally:
        fleet.procs["a"].wait()
        fleet.gateway("a", "--api-key", KEY)  # back for the tests after this one
        wait_healthy(fleet.url("a"), list(fleet.procs.values()), timeout=60)
    assert 5 <= len(first) < 150 and (status, again, replayed) == (200, 204, 200)
    events = first + resumed
    assert [e for e, _ in events] == [f"{rid}:{seq}" for seq in range(150)]  # no gap, no repeat
    last = resumed[-1][1]
    text = "".join(str(e["token"]["text"]) for _, e in events)  # type: ignore[index]
    assert last["generated_text"] == text and last["details"]["finish_reason"] == "length"  # type: ignore[index]
    assert [e["index"] for _, e in events] == list(range(1, 151))
    wait_workers_idle(fleet.redis_url, fleet.prefix, expect=2, timeout=20)
    assert worker_counter(fleet.metrics_ports, ADMITTED) - before == 1


def test_a_worker_and_then_the_gateway_killed_lose_nothing_the_journal_lacked(redis_server) -> None:  # type: ignore[no-untyped-def]
    """Workers that write journals only when urged (a 20 s interval, past the test): kill -9 the
    worker of some streams (their gateway continues them on the other, journaling the tokens the
    dead one never wrote), then kill -9 the gateway (its clients resume through the other, which
    adopts each stream: the owner writes its journal with the Accepted)."""
    fleet = _fleet(redis_server.url, 2, "20", {"d": (), "e": ()}, ("--checkpoint-interval", "30"))
    try:
        streams = [ResumedStream(f"double {i}", f"dbl-{uuid.uuid4().hex[:8]}-{i}") for i in range(6)]
        on_victim: list[int] = []
        survivor: list[int] = []  # index of the worker left alive

        async def kill_a_worker_then_the_gateway() -> None:
            await asyncio.wait_for(asyncio.gather(*(s.tokens_seen.wait() for s in streams)), timeout=30)
            deadline = time.monotonic() + 20
            running: dict[str, int] = {}
            while sum(running.values()) < 6 and time.monotonic() < deadline:  # heartbeats show all 6
                running = {w.worker_id: w.running for w in worker_infos(fleet.redis_url, fleet.prefix)}
                await asyncio.sleep(0.05)
            # The worker with the most streams (at least one) is killed; the other takes them over.
            ids = [f"{fleet.prefix}-w{i}" for i in range(2)]
            victim = max(range(2), key=lambda i: running.get(ids[i], 0))
            on_victim.append(running.get(ids[victim], 0))
            survivor.append(1 - victim)
            fleet.procs[f"w{victim}"].kill()
            # Its streams are continued on the other once its heartbeat has been gone a TTL (2 s).
            while time.monotonic() < deadline + 20:
                running = {w.worker_id: w.running for w in worker_infos(fleet.redis_url, fleet.prefix)}
                if running.get(ids[1 - victim], 0) == 6:
                    break
                await asyncio.sleep(0.1)
            assert running.get(ids[1 - victim], 0) == 6, running
            fleet.procs["d"].kill()

        async def staggered() -> None:
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
                tasks = []
                for s in streams:  # a moment apart, so both workers take some
                    tasks.append(asyncio.ensure_future(resumed_stream(client, [fleet.url("d"), fleet.url("e")], s, 400)))
                    await asyncio.sleep(0.15)
                await kill_a_worker_then_the_gateway()
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=90)

        admitted = [worker_counter([port], ADMITTED) for port in fleet.metrics_ports]
        asyncio.run(staggered())
        assert on_victim[0] > 0
        for s in streams:
            assert s.error is None and s.reconnects >= 1, (s.request_id, s.error)
            assert s.seqs == list(range(400)), s.seqs  # no gap, no repeat across both faults
            assert s.generated_text == s.text  # the journal gave the adopter every token the client had
        # The survivor generated its own streams and the continuations of the victim's, each once.
        port = fleet.metrics_ports[survivor[0]]
        assert worker_counter([port], ADMITTED) - admitted[survivor[0]] == 6
        print(f"[worker then gateway kill -9] {on_victim[0]} of 6 streams continued off the killed worker, "
              "then all 6 resumed through the other gateway")
    finally:
        fleet.stop()
