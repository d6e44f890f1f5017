"""What every fault test needs: many concurrent SSE clients that record exactly what they received,
and the workers' own load counters read from their heartbeats."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from common.config import DEFAULT_MODEL_ID
from common.protocol import WorkerInfo, decode_worker_info
from common.redis_clients import sync_client
from common.streams import Keys

__all__ = ["StreamResult", "run_streams", "service_back_at", "stream_once", "worker_infos", "wait_workers_idle", "wait_workers_running", "busiest_worker", "summarize"]


@dataclass
class StreamResult:
    prompt: str
    status: int = 0
    token_ids: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)  # from each event's `id:` line (<request id>:<seq>)
    text: str = ""
    finish_reason: str | None = None
    error_type: str | None = None
    retry_after: str | None = None
    disconnected: bool = False
    exception: str | None = None

    @property
    def completed(self) -> bool:
        return self.status == 200 and self.finish_reason is not None and self.error_type is None

    @property
    def duplicated(self) -> int:
        return len(self.seqs) - len(set(self.seqs))

    @property
    def lost(self) -> int:
        # Seqs must run 0, 1, 2, ... with no hole; a hole means a token never reached the client.
        return (max(self.seqs) + 1 - len(set(self.seqs))) if self.seqs else 0


async def tgi_events(r: httpx.Response) -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
    """A TGI event stream's events, each with the `id:` line before it (None without one)."""
    event_id: str | None = None
    async for line in r.aiter_lines():
        if line.startswith("id:"):
            event_id = line[3:]
        elif line.startswith("data:"):
            yield event_id, json.loads(line[5:])
            event_id = None


async def stream_once(client: httpx.AsyncClient, base: str, prompt: str, max_new_tokens: int,
                      *, disconnect_after: int | None = None, **params: object) -> StreamResult:
    """POST /generate_stream and record every event; close the connection after
    `disconnect_after` token events when given (a client going away mid-stream)."""
    res = StreamResult(prompt)
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, "details": True, **params}}
    try:
        async with client.stream("POST", f"{base}/generate_stream", json=body) as r:
            res.status = r.status_code
            res.retry_after = r.headers.get("retry-after")
            if r.status_code != 200:
                payload = json.loads(await r.aread() or b"{}")
                res.error_type = payload.get("error_type")
                return res
            async for event_id, event in tgi_events(r):
                if "error" in event:
                    res.error_type = event.get("error_type", "unknown")
                    return res
                res.token_ids.append(event["token"]["id"])
                if event_id is not None:
                    res.seqs.append(int(event_id.rsplit(":", 1)[1]))
                if not event["token"]["special"]:
                    res.text += event["token"]["text"]
                if event.get("details"):
                    res.finish_reason = event["details"]["finish_reason"]
                if disconnect_after is not None and len(res.token_ids) >= disconnect_after:
                    res.disconnected = True
                    return res
    except httpx.HTTPError as exc:
        res.exception = f"{type(exc).__name__}: {exc}"
    return res


async def _run_streams(base: str, prompts: list[str], max_new_tokens: int, timeout: float, **kw: object) -> list[StreamResult]:
    limits = httpx.Limits(max_connections=len(prompts) + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        return list(await asyncio.gather(*(stream_once(client, base, p, max_new_tokens, **kw) for p in prompts)))  # type: ignore[arg-type]


def run_streams(base: str, prompts: list[str], max_new_tokens: int, timeout: float = 120.0, **kw: object) -> list[StreamResult]:
    return asyncio.run(_run_streams(base, prompts, max_new_tokens, timeout, **kw))


def worker_infos(redis_url: str, prefix: str, model: str = DEFAULT_MODEL_ID, cluster: bool = False) -> list[WorkerInfo]:
    client = sync_client(redis_url, cluster)
    try:
        keys = Keys(prefix)
        worker_ids = [w.decode() for w in client.zrange(keys.worker_registry(model), 0, -1)]
        values = [client.get(keys.worker_heartbeat(w)) for w in worker_ids]
        return [decode_worker_info(v) for v in values if v is not None]
    finally:
        client.close()


def wait_workers_idle(redis_url: str, prefix: str, expect: int, timeout: float = 20.0) -> list[WorkerInfo]:
    """Until every live worker reports nothing running or waiting and all its KV free."""
    deadline = time.monotonic() + timeout
    infos: list[WorkerInfo] = []
    while time.monotonic() < deadline:
        infos = worker_infos(redis_url, prefix)
        if len(infos) == expect and all(
            w.running == 0 and w.waiting == 0 and w.free_kv_tokens == w.capacity_tokens for w in infos
        ):
            return infos
        time.sleep(0.2)
    raise AssertionError(f"workers not idle after {timeout}s: {infos}")


def busiest_worker(redis_url: str, prefix: str, procs: dict[str, Any], timeout: float, at_least: int = 3) -> Any:
    """Until one of `procs` (worker id -> its process) runs `at_least` requests: the one running most."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [w for w in worker_infos(redis_url, prefix) if w.worker_id in procs and w.running >= at_least]
        if busy:
            return procs[max(busy, key=lambda w: w.running).worker_id]
        time.sleep(0.1)
    raise AssertionError(f"no worker ran {at_least} requests within {timeout}s")


def wait_workers_running(redis_url: str, prefix: str, at_least: int, timeout: float = 20.0,
                         cluster: bool = False) -> list[WorkerInfo]:
    """Until the live workers together report at least `at_least` requests running."""
    deadline = time.monotonic() + timeout
    infos: list[WorkerInfo] = []
    while time.monotonic() < deadline:
        infos = worker_infos(redis_url, prefix, cluster=cluster)
        if sum(w.running for w in infos) >= at_least:
            return infos
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} requests running after {timeout}s: {infos}")


def summarize(name: str, results: list[StreamResult]) -> Counter[str]:
    """Counts the closing note quotes: requests, completed, errors by kind, lost, duplicated."""
    counts: Counter[str] = Counter(requests=len(results))
    for r in results:
        counts["completed"] += r.completed
        counts["lost_tokens"] += r.lost
        counts["duplicated_tokens"] += r.duplicated
        counts["disconnected"] += r.disconnected
        if r.error_type:
            counts[f"error:{r.error_type}"] += 1
        if r.exception:
            counts["client_exception"] += 1
    print(f"[{name}] " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return counts


@dataclass
class ResumedStream:
    """A streaming client that reconnects with Last-Event-ID when its connection breaks."""

    prompt: str
    request_id: str
    events: list[tuple[int, int, str, bool]] = field(default_factory=list)  # (seq, token id, text, special)
    generated_text: str | None = None
    finish_reason: str | None = None
    error: tuple[int, str | None] | None = None  # (status, error_type) of a refusal or error event
    reconnects: int = 0
    tokens_seen: asyncio.Event = field(default_factory=asyncio.Event)  # set at `signal_after` tokens, or the end

    @property
    def seqs(self) -> list[int]:
        return [e[0] for e in self.events]

    @property
    def text(self) -> str:
        return "".join(text for _, _, text, special in self.events if not special)

    @property
    def last_event_id(self) -> str | None:
        return f"{self.request_id}:{self.events[-1][0]}" if self.events else None


async def resumed_stream(client: httpx.AsyncClient, bases: list[str], res: ResumedStream, max_new_tokens: int,
                         *, signal_after: int = 3, deadline_s: float = 90.0, headers: dict[str, str] | None = None,
                         reconnect_headers: dict[str, str] | None = None,
                         reconnect_when: asyncio.Event | None = None) -> ResumedStream:
    """POST /generate_stream to bases[0]; on a broken connection, POST it again with Last-Event-ID
    to the next base (the last one is retried until the deadline: a restarting gateway), once
    `reconnect_when` is set when given."""
    try:
        return await _resumed_stream(client, bases, res, max_new_tokens, signal_after, deadline_s, headers,
                                     reconnect_headers, reconnect_when)
    finally:
        res.tokens_seen.set()


async def _resumed_stream(client: httpx.AsyncClient, bases: list[str], res: ResumedStream, max_new_tokens: int,
                          signal_after: int, deadline_s: float, headers: dict[str, str] | None,
                          reconnect_headers: dict[str, str] | None,
                          reconnect_when: asyncio.Event | None) -> ResumedStream:
    body = {"inputs": res.prompt, "parameters": {"max_new_tokens": max_new_tokens, "details": True}}
    deadline = time.monotonic() + deadline_s
    attempt = 0
    while time.monotonic() < deadline:
        base = bases[min(attempt, len(bases) - 1)]
        h = {"x-request-id": res.request_id, **(headers or {})}
        if res.events:
            h = {**h, **(reconnect_headers or {}), "Last-Event-ID": res.last_event_id or ""}
        try:
            async with client.stream("POST", f"{base}/generate_stream", json=body, headers=h) as r:
                if r.status_code != 200:
                    res.error = (r.status_code, json.loads(await r.aread() or b"{}").get("error_type"))
                    return res
                async for event_id, event in tgi_events(r):
                    if "error" in event:
                        res.error = (200, event.get("error_type"))
                        return res
                    token = event["token"]
                    seq = int((event_id or ":-1").rsplit(":", 1)[1])
                    res.events.append((seq, token["id"], token["text"], token["special"]))
                    if len(res.events) >= signal_after:
                        res.tokens_seen.set()
                    if event.get("generated_text") is not None:
                        res.generated_text = event["generated_text"]
                        res.finish_reason = (event.get("details") or {}).get("finish_reason")
                        return res
        except httpx.HTTPError:
            pass
        attempt += 1
        res.reconnects += 1
        if reconnect_when is not None:
            await reconnect_when.wait()
        await asyncio.sleep(0.2)  # a connection refused while the gateway restarts: try again soon
    res.error = (0, "client deadline")
    return res


def worker_counter(metrics_ports: list[int], name: str) -> float:
    """The sum over workers of a counter from their /metrics listeners."""
    total = 0.0
    for port in metrics_ports:
        for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def service_back_at(base: str, timeout: float) -> float:
    """The monotonic time of the first of 5 POST /generate in a row that answer 200, within `timeout`."""
    deadline = time.monotonic() + timeout
    ok, first = 0, 0.0
    while time.monotonic() < deadline and ok < 5:
        r = httpx.post(f"{base}/generate", json={"inputs": "ping", "parameters": {"max_new_tokens": 5}}, timeout=10)
        if r.status_code == 200:
            ok, first = ok + 1, first or time.monotonic()
        else:
            ok, first = 0, 0.0
            time.sleep(0.2)
    assert ok == 5, f"service not back within {timeout}s"
    return first
