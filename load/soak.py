"""Mixed-traffic soak of a serve-style fleet: does anything leak or stick after a long mixed run?

Starts what `genfleet serve` starts (an embedded Redis-compatible server, one gateway, one worker
on the default model on CPU), drives it with closed-loop users whose every request is one of the
kinds below, then stops the traffic and checks the fleet's end state:

- streams (/generate_stream, checked: contiguous seqs and a finish) and non-streams (/generate,
  /v1/chat/completions);
- client drops: a stream closed after two tokens, a /generate whose client times out;
- bad bodies (bad JSON, wrong types, unknown route shapes): always a 4xx, never a 5xx;
- stalled bodies (headers and 5 of 64 bytes, then silence): the gateway answers a 4xx itself
  once its --body-read-timeout passes (`--no-stalled` leaves them out).

Pass criteria: no unexpected outcome (5xx, broken stream, exception); afterwards the gateway's
in-flight count, the queue, the pending entries and the running batch are 0 and every KV block is
free (no leak); gateway and worker RSS grew less than 5% between the end of the warm-up and the end.

    python -m load.soak --duration 1800 --users 3 --out soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from load.soak_fleet import SoakFleet, idle

__all__ = ["SoakConfig", "SoakReport", "run", "main"]

# Kinds of request and how often each is drawn.
MIX: dict[str, int] = {"stream": 4, "generate": 2, "chat": 2, "stream_drop": 2, "generate_drop": 1,
                       "bad_body": 2, "stalled_body": 1}
_BAD_BODIES = (
    b"{not json",
    b'{"inputs": 7}',
    b'{"inputs": "hi", "parameters": {"max_new_tokens": -3}}',
    b'{"inputs": "hi", "parameters": {"temperature": "hot"}}',
    b'{"inputs": ""}',
    b"\xff\xfe not utf-8",
    b"[]",
)
_STALL_WAIT_S = 20.0  # how long a stalled-body client waits for the gateway's answer


@dataclass(frozen=True)
class SoakConfig:
    duration: float = 180.0  # seconds of traffic, warm-up included
    warmup: float = 40.0  # seconds before the RSS baseline is taken
    users: int = 3  # closed-loop clients, each one request at a time
    think: float = 0.1  # seconds a user waits between requests
    stalled: bool = True  # include stalled bodies
    seed: int = 0
    settle_timeout: float = 60.0  # seconds the fleet gets to reach its idle end state
    max_rss_growth: float = 0.05


@dataclass
class SoakReport:
    config: SoakConfig
    outcomes: Counter[str] = field(default_factory=Counter)  # "kind:outcome" -> count
    unexpected: list[str] = field(default_factory=list)  # the first few, for the report
    rss_kb: dict[str, tuple[int, int]] = field(default_factory=dict)  # process -> (after warm-up, end)
    end_state: dict[str, float] = field(default_factory=dict)  # gauges of FLEET_GAUGES
    settle_s: float = 0.0
    elapsed_s: float = 0.0

    @property
    def rss_growth(self) -> dict[str, float]:
        return {name: end / start - 1 for name, (start, end) in self.rss_kb.items()}

    @property
    def failures(self) -> list[str]:
        out = []
        unexpected = sum(v for k, v in self.outcomes.items() if k.endswith(":unexpected"))
        if unexpected:
            out.append(f"{unexpected} unexpected outcomes, e.g. {self.unexpected[:3]}")
        if not idle(self.end_state):
            out.append(f"not idle {self.config.settle_timeout:.0f} s after the traffic (in flight, queued, "
                       f"running, or KV blocks leaked): {self.end_state}")
        out += [f"{name} RSS grew {g:.1%}" for name, g in self.rss_growth.items() if g >= self.config.max_rss_growth]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "outcomes": dict(self.outcomes), "unexpected": self.unexpected[:20],
                "rss_kb": self.rss_kb, "rss_growth": self.rss_growth, "end_state": self.end_state,
                "settle_s": self.settle_s, "elapsed_s": self.elapsed_s, "failures": self.failures}

    def to_markdown(self) -> str:
        total = sum(self.outcomes.values())
        lines = [f"{total} requests in {self.elapsed_s:.0f} s ({self.config.users} users); "
                 f"idle {self.settle_s:.1f} s after the traffic stopped", "",
                 "| process | RSS after warm-up | RSS at the end | growth |", "|---|---|---|---|"]
        for name, (start, end) in self.rss_kb.items():
            lines.append(f"| {name} | {start / 1024:.0f} MiB | {end / 1024:.0f} MiB | {end / start - 1:+.1%} |")
        lines += ["", "| outcome | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(self.outcomes.items())]
        lines += ["", "End state: " + ", ".join(f"{k} {v:g}" for k, v in self.end_state.items()),
                  "", "Result: " + ("pass" if not self.failures else "FAIL: " + "; ".join(self.failures))]
        return "\n".join(lines) + "\n"


class _User:
    """One closed-loop client; records each request's outcome as `kind:ok|expected...|unexpected`."""

    def __init__(self, base: str, report: SoakReport, rng: random.Random) -> None:
        self.base = base
        self.report = report
        self.rng = rng
        self.think = report.config.think
        kinds = {k: w for k, w in MIX.items() if report.config.stalled or k != "stalled_body"}
        self.kinds, self.weights = list(kinds), list(kinds.values())

    def note(self, kind: str, outcome: str, detail: str = "") -> None:
        self.report.outcomes[f"{kind}:{outcome}"] += 1
        if outcome == "unexpected" and len(self.report.unexpected) < 50:
            self.report.unexpected.append(f"{kind}: {detail[:200]}")

    async def loop(self, client: httpx.AsyncClient, until: float) -> None:
        while time.monotonic() < until:
            kind = self.rng.choices(self.kinds, self.weights)[0]
            try:
                await getattr(self, kind)(client)
            except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
                self.note(kind, "unexpected", f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.think)

    def _prompt(self) -> str:
        return f"Request {self.rng.randrange(10**6)}: tell me about the number {self.rng.randrange(100)}"

    def _params(self, low: int = 4, high: int = 24) -> dict[str, Any]:
        return {"max_new_tokens": self.rng.randint(low, high), "do_sample": self.rng.random() < 0.5, "seed": 7}

    async def stream(self, client: httpx.AsyncClient, drop_after: int = 0) -> None:
        kind = "stream_drop" if drop_after else "stream"
        body = {"inputs": self._prompt(), "parameters": self._params(8 if drop_after else 4, 24)}
        seqs: list[int] = []
        finished = False
        async with client.stream("POST", f"{self.base}/generate_stream", json=body) as r:
            if r.status_code != 200:
                return self.note(kind, "unexpected", f"status {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if line.startswith("id:"):
                    seqs.append(int(line.rsplit(":", 1)[1]))
                elif line.startswith("data:"):
                    event = json.loads(line[5:])
                    if "error" in event:
                        return self.note(kind, "unexpected", f"error event {event}")
                    finished = event.get("generated_text") is not None  # only the last event has it
                    if drop_after and len(seqs) >= drop_after:
                        return self.note(kind, "dropped")
        if seqs != list(range(len(seqs))) or not finished:
            return self.note(kind, "unexpected", f"seqs {seqs}, finished {finished}")
        self.note(kind, "ok")

    async def stream_drop(self, client: httpx.AsyncClient) -> None:
        await self.stream(client, drop_after=2)

    async def generate(self, client: httpx.AsyncClient, timeout: float | None = None) -> None:
        kind = "generate_drop" if timeout else "generate"
        body = {"inputs": self._prompt(), "parameters": self._params(16 if timeout else 4, 48 if timeout else 24)}
        try:
            r = await client.post(f"{self.base}/generate", json=body, timeout=timeout or client.timeout)
        except httpx.TimeoutException:
            if timeout:
                return self.note(kind, "dropped")
            raise
        ok = r.status_code == 200 and isinstance(r.json().get("generated_text"), str)
        self.note(kind, "ok" if ok else "unexpected", f"status {r.status_code}: {r.text[:200]}")

    async def generate_drop(self, client: httpx.AsyncClient) -> None:
        await self.generate(client, timeout=0.3)

    async def chat(self, client: httpx.AsyncClient) -> None:
        body = {"model": "tgi", "messages": [{"role": "user", "content": self._prompt()}],
                "max_tokens": self.rng.randint(4, 24)}
        r = await client.post(f"{self.base}/v1/chat/completions", json=body)
        ok = r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        self.note("chat", "ok" if ok else "unexpected", f"status {r.status_code}: {r.text[:200]}")

    async def bad_body(self, _client: httpx.AsyncClient) -> None:
        body = self.rng.choice(_BAD_BODIES)
        status = await self._raw_post(body, len(body))
        self.note("bad_body", "rejected" if 400 <= status < 500 else "unexpected", f"status {status} for {body!r}")

    async def stalled_body(self, _client: httpx.AsyncClient) -> None:
        # Declares 64 bytes, sends 5, then stays silent: the gateway must give up on it itself
        # (--body-read-timeout, 10 s by default) with a 4xx, and hold no permit meanwhile.
        status = await self._raw_post(b'{"inp', 64, wait=_STALL_WAIT_S)
        ok = 400 <= status < 500
        self.note("stalled_body", "timed_out" if ok else "unexpected", f"status {status} after a stalled body")

    async def _raw_post(self, body: bytes, length: int, wait: float = 30.0) -> int:
        host, port = self.base.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"POST /generate HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (length, body))
            await writer.drain()
            try:
                head = await asyncio.wait_for(reader.readline(), timeout=wait)
            except asyncio.TimeoutError:
                return 0  # no answer at all within `wait`
            return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else -1
        finally:
            writer.close()


async def _traffic(base: str, report: SoakReport, config: SoakConfig, until: float) -> None:
    limits = httpx.Limits(max_connections=config.users * 2 + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        users = [_User(base, report, random.Random(config.seed * 1000 + i)) for i in range(config.users)]
        progress = asyncio.create_task(_progress(report))
        await asyncio.gather(*(u.loop(client, until) for u in users))
        progress.cancel()


async def _progress(report: SoakReport, every: float = 60.0) -> None:
    """A line a minute on stderr, so a long run shows it is alive and what it has seen."""
    while True:
        await asyncio.sleep(every)
        print(f"soak: {dict(sorted(report.outcomes.items()))}", file=sys.stderr, flush=True)


def run(config: SoakConfig, log_path: str | None = None) -> SoakReport:
    report = SoakReport(config)
    with SoakFleet(log_path=log_path) as fleet:
        started = time.monotonic()
        asyncio.run(_traffic(fleet.base_url, report, config, started + config.warmup))
        baseline = fleet.rss_kb()
        asyncio.run(_traffic(fleet.base_url, report, config, started + config.duration))
        report.elapsed_s = time.monotonic() - started
        settled = time.monotonic()
        report.end_state = fleet.wait_idle(config.settle_timeout)
        report.settle_s = time.monotonic() - settled
        end = fleet.rss_kb()
        report.rss_kb = {name: (baseline[name], end[name]) for name in baseline}
    return report


def main(argv: list[str] | None = None) -> int:
    d = SoakConfig()
    p = argparse.ArgumentParser(prog="python -m load.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=d.duration, help="seconds of traffic, warm-up included")
    p.add_argument("--warmup", type=float, default=None, help="seconds before the RSS baseline (default: 20%% of the run, 40 s at least)")
    p.add_argument("--users", type=int, default=d.users, help="closed-loop clients")
    p.add_argument("--think", type=float, default=d.think, help="seconds between a user's requests")
    p.add_argument("--stalled", action=argparse.BooleanOptionalAction, default=d.stalled,
                   help="include stalled request bodies")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--log", help="the fleet's log file (default: a temporary file)")
    args = p.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else max(d.warmup, 0.2 * args.duration)
    config = SoakConfig(duration=args.duration, warmup=min(warmup, args.duration / 2), users=args.users,
                        think=args.think, stalled=args.stalled, seed=args.seed)
    report = run(config, log_path=args.log)
    sys.stdout.write(report.to_markdown())
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report.to_json(), fh, indent=1)
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())

