"""What every fault test needs: many concurrent SSE clients that record exactly what they received,
and the workers' own load counters read from their heartbeats."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import redis

from common.protocol import WorkerInfo, decode_worker_info
from common.streams import Keys

__all__ = ["StreamResult", "run_streams", "stream_once", "worker_infos", "wait_workers_idle", "wait_workers_running", "summarize"]


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
            event_id: str | None = None
            async for line in r.aiter_lines():
                if line.startswith("id:"):
                    event_id = line[3:]
                elif line.startswith("data:"):
                    event = json.loads(line[5:])
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
                    event_id = None
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


def worker_infos(redis_url: str, prefix: str) -> list[WorkerInfo]:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=Keys(prefix).worker_heartbeat_pattern()))
        return [decode_worker_info(v) for v in client.mget(keys) if v is not None] if keys else []
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


def wait_workers_running(redis_url: str, prefix: str, at_least: int, timeout: float = 20.0) -> list[WorkerInfo]:
    """Until the live workers together report at least `at_least` requests running."""
    deadline = time.monotonic() + timeout
    infos: list[WorkerInfo] = []
    while time.monotonic() < deadline:
        infos = worker_infos(redis_url, prefix)
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
