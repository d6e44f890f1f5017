"""Load generator for any streaming LLM endpoint: genfleet, TGI or vLLM.

Open loop (`--mode open --rate R`): Poisson arrivals at R requests/s regardless of how the server
keeps up, the way real traffic arrives. Closed loop (`--mode closed --concurrency N`): N users,
each sending its next request when the last one ends. Comma lists (`--rate 2,4,8`) sweep the load
and add a TTFT-vs-load plot. Every run is bounded by `--num-requests` and `--duration`.

    python -m load.run_load --url http://127.0.0.1:8080 --mode closed --concurrency 16 \\
        --num-requests 200 --out load_results

Writes, per run, `<label>.json` (summary, timeline, per-request records) and, for the whole
invocation, `summary.md` and PNG plots. Targets must be loopback unless `--allow-remote`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import socket
import sys
import time
from collections.abc import Coroutine, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from load.apis import API_NAMES, Api, get_api
from load.report import to_markdown, to_payload
from load.results import RequestRecord, RunResult
from load.sse_client import Target, stream_sse_batches
from load.workloads import PromptSpec, load_prompts, poisson_gaps

__all__ = ["run_open_loop", "run_closed_loop", "parse_target", "run_async", "main"]

T = TypeVar("T")

async def _one(api: Api, target: Target, spec: PromptSpec, result: RunResult, t0: float, timeout: float) -> None:
    start = time.perf_counter()
    record = RequestRecord(start - t0, None, 0.0, 0, len(spec.prompt))
    last = start
    reported: int | None = None

    async def consume() -> None:
        # Events read together share their arrival time: the first token event of a batch
        # carries the gap since the last one, the others a gap of 0.
        async with aclosing(stream_sse_batches(target, api.path, api.body(spec))) as batches:
            async for at, payloads in batches:
                if take(payloads, at):
                    return

    def take(payloads: list[bytes], at: float) -> bool:
        """Record one batch of events; True when the stream is over (its end or an error)."""
        nonlocal last, reported
        produced, finished = 0, False
        for data in payloads:
            parsed = api.parse(data)
            if parsed.error:
                record.error = parsed.error
                finished = True
                break
            if parsed.reported_tokens is not None:
                reported = parsed.reported_tokens
            if parsed.tokens:
                if record.ttft is None:
                    record.ttft = at - start
                else:
                    result.add_itl(at - last)
                last = at
                produced += parsed.tokens
            if parsed.done:
                finished = True
                break
        if produced:
            record.output_tokens += produced
            result.add_tokens(at - t0, produced)
        return finished

    try:
        await asyncio.wait_for(consume(), timeout)
    except asyncio.TimeoutError:
        record.error = f"timeout after {timeout:.0f}s"
    except (OSError, ConnectionError, asyncio.IncompleteReadError, RuntimeError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:300]
    if record.error is None and record.ttft is None:
        record.error = "stream ended without a token"
    if reported is not None and record.error is None:
        record.output_tokens = reported
    record.e2e = time.perf_counter() - start
    result.records.append(record)


async def run_open_loop(api: Api, target: Target, specs: list[PromptSpec], rate: float, duration: float,
                        timeout: float, label: str, meta: dict[str, Any], progress: Any = None,
                        seed: int = 0) -> RunResult:
    result = RunResult(label, meta)
    t0 = time.perf_counter()
    tasks: set[asyncio.Task[None]] = set()
    next_at = t0
    for spec, gap in zip(specs, poisson_gaps(rate, seed)):
        next_at += gap
        if next_at - t0 > duration:
            break
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(_one(api, target, spec, result, t0, timeout))
        tasks.add(task)
        task.add_done_callback(lambda t: (tasks.discard(t), progress and progress.update(1)))
    if tasks:
        await asyncio.wait(set(tasks))
    result.duration = time.perf_counter() - t0
    return result


async def run_closed_loop(api: Api, target: Target | list[Target], specs: list[PromptSpec], concurrency: int,
                          duration: float, timeout: float, label: str, meta: dict[str, Any],
                          progress: Any = None) -> RunResult:
    """`concurrency` users sending request after request; several targets (gateways) share them out."""
    result = RunResult(label, meta)
    t0 = time.perf_counter()
    queue: Iterator[PromptSpec] = iter(specs)
    targets = target if isinstance(target, list) else [target]

    async def user(own: Target) -> None:
        for spec in queue:  # shared iterator: each spec is sent once
            if time.perf_counter() - t0 > duration:
                return
            await _one(api, own, spec, result, t0, timeout)
            if progress is not None:
                progress.update(1)

    await asyncio.gather(*(user(targets[i % len(targets)]) for i in range(concurrency)))
    result.duration = time.perf_counter() - t0
    return result


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop where it is installed (uvicorn[standard] brings it): the client shares
    the cores with what it measures, and uvloop halves its cost per socket read."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def parse_target(url: str, allow_remote: bool, api_key: str | None = None) -> Target:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--url must be http://host:port, got {url!r} (https is not supported)")
    host, port = parts.hostname, parts.port or 80
    if not allow_remote:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = {info[4][0] for info in infos}
        if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
            raise ValueError(f"{host} is not a loopback address; pass --allow-remote to load a remote server")
    headers = (("Authorization", f"Bearer {api_key}"),) if api_key else ()
    return Target(host, port, headers)


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m load.run_load", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL (loopback unless --allow-remote)")
    p.add_argument("--api", choices=API_NAMES, default="tgi", help="tgi: /generate_stream; openai: /v1/completions; chat: /v1/chat/completions")
    p.add_argument("--model", default="tgi", help="model name sent to OpenAI routes")
    p.add_argument("--mode", choices=("open", "closed"), default="closed")
    p.add_argument("--rate", default="4", help="open loop: requests/s, comma list to sweep ('inf' = all at once)")
    p.add_argument("--concurrency", default="16", help="closed loop: users, comma list to sweep")
    p.add_argument("--num-requests", type=int, default=200, help="requests per run at most")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of sending per run at most")
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--prompts", default="synthetic", help="'synthetic' or a ShareGPT-style JSON file")
    p.add_argument("--max-new-tokens", type=int, default=None, help="fix every output budget")
    p.add_argument("--ignore-eos", action="store_true", help="ask the server to generate the whole budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default=None, help="sent as a Bearer token")
    p.add_argument("--out", default="load_results", help="directory for JSON, summary.md and plots")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback target")
    return p


async def _main_async(args: argparse.Namespace) -> list[RunResult]:
    target = parse_target(args.url, args.allow_remote, args.api_key)
    api = get_api(args.api, args.model, args.ignore_eos)
    points = [float(x) for x in args.rate.split(",")] if args.mode == "open" else [int(x) for x in args.concurrency.split(",")]
    results = []
    for point in points:
        specs = load_prompts(args.prompts, args.num_requests, args.seed, args.max_new_tokens)
        label = f"rate-{point:g}" if args.mode == "open" else f"users-{point}"
        meta = {"url": args.url, "api": args.api, "mode": args.mode, "load": point, "prompts": args.prompts,
                "num_requests": args.num_requests, "duration_limit": args.duration,
                "max_new_tokens": args.max_new_tokens, "ignore_eos": args.ignore_eos,
                "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                "command": " ".join(["python -m load.run_load", *sys.argv[1:]])}
        progress = None
        if not args.no_progress:
            from tqdm import tqdm

            progress = tqdm(total=len(specs), desc=label, unit="req", file=sys.stderr)
        try:
            if args.mode == "open":
                result = await run_open_loop(api, target, specs, point, args.duration, args.request_timeout,
                                             label, meta, progress, args.seed)
            else:
                result = await run_closed_loop(api, target, specs, int(point), args.duration, args.request_timeout,
                                               label, meta, progress)
        finally:
            if progress is not None:
                progress.close()
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        results = run_async(_main_async(args))
    except ValueError as exc:
        print(f"run_load: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payloads = [to_payload(r) for r in results]
    for payload in payloads:
        (out / f"{payload['label']}.json").write_text(json.dumps(payload, indent=1))
    table = to_markdown(payloads)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    if not args.no_plots:
        from load.plots import plot_all

        for path in plot_all(payloads, out):
            print(f"wrote {path}", file=sys.stderr)
    failed = sum(p["summary"]["failed"] for p in payloads)
    return 1 if failed and failed == sum(p["summary"]["requests"] for p in payloads) else 0


if __name__ == "__main__":
    sys.exit(main())
