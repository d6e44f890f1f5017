"""The flood workload through the whole fleet path: `genfleet serve` (Redis + gateway + worker) on
loopback, every request sent at t=0 over HTTP, tokens read back as SSE.

The worker runs `--random-weights`, so any model shape can be measured with nothing but its
config.json and a tokenizer. Prompts are words that are one token each, so a prompt of N words
is exactly N tokens whichever tokenizer is used, and random words keep the prefix cache out of it.

    python -m load.bench_fleet --model-dir DIR --requests 1000 --prompt-tokens 1024 --new-tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from load.sse_client import Target, stream_sse

__all__ = ["one_token_words", "flood", "serve_argv", "serving", "main"]


def one_token_words(tokenizer: Any, limit: int = 4000) -> list[str]:
    """Words (with their leading space) that the tokenizer encodes as exactly one token."""
    words: list[str] = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if re.fullmatch(r" [a-z]{3,12}", text) and tokenizer.encode(text, add_special_tokens=False) == [token_id]:
            words.append(text)
            if len(words) >= limit:
                break
    if len(words) < 100:
        raise RuntimeError("the tokenizer has too few single-token words to build prompts from")
    return words


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_argv(model_dir: Path, port: int, requests: int, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "genfleet", "serve", "--model-id", str(model_dir), "--random-weights",
        "--port", str(port), "--hostname", "127.0.0.1", "--max-concurrent-requests", str(requests + 16),
        "--max-input-tokens", "4095", "--max-total-tokens", "4096", "--prefix-caching", "false", *extra,
    ]


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"genfleet serve exited with {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"genfleet serve was not healthy within {timeout:.0f}s")


@contextmanager
def serving(model_dir: Path, requests: int, worker_flags: list[str], log_path: Path | None = None,
            ready_timeout: float = 600.0) -> Iterator[Target]:
    """`genfleet serve` on `model_dir` (random weights) on a free loopback port, healthy, until the block ends."""
    port = _free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(serve_argv(model_dir, port, requests, worker_flags), stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc, ready_timeout)
        yield Target("127.0.0.1", port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            log.close()  # type: ignore[union-attr]


async def _one(target: Target, prompt: str, new: int, t0: float) -> tuple[float, list[float]]:
    body = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": new, "ignore_eos": True}}).encode()
    times = [t async for t, data in stream_sse(target, "/generate_stream", body) if data.startswith(b"{\"index\"")]
    return t0, times


async def _flood(target: Target, prompts: list[str], new: int) -> dict[str, float]:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(_one(target, p, new, t0) for p in prompts), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    runs = [r for r in results if not isinstance(r, BaseException)]
    end = max((times[-1] for _, times in runs if times), default=time.perf_counter())
    tokens = sum(len(times) for _, times in runs)
    ttft = sorted(times[0] - start for start, times in runs if times)
    tpot = sorted((times[-1] - times[0]) / (len(times) - 1) for _, times in runs if len(times) > 1)
    itl = sorted(b - a for _, times in runs for a, b in zip(times, times[1:]))

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    return {
        "ok": len(runs), "failed": len(failures), "tokens": tokens, "seconds": end - t0, "tok_s": tokens / (end - t0),
        "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99), "tpot_p50": pct(tpot, 0.5), "tpot_p99": pct(tpot, 0.99),
        "itl_p50": pct(itl, 0.5), "itl_p99": pct(itl, 0.99),
        "first_error": repr(failures[0])[:300] if failures else "",
    }


async def _one_at_a_time(target: Target, prompts: list[str], new: int) -> list[float]:
    ttfts = []
    for prompt in prompts:
        start, times = await _one(target, prompt, new, time.perf_counter())
        ttfts.append(times[0] - start)
    return sorted(ttfts)


def flood(model_dir: Path, requests: int, prompt_tokens: int, new: int, worker_flags: list[str],
          log_path: Path | None = None, ready_timeout: float = 600.0, single_prompt_tokens: int = 128,
          singles: int = 10) -> dict[str, float]:
    """Start `genfleet serve` on `model_dir`, send every request at t=0, then `singles` requests
    of `single_prompt_tokens` one at a time (TTFT on an idle fleet, `single_ttft_p50`); stop it."""
    from transformers import AutoTokenizer

    words = one_token_words(AutoTokenizer.from_pretrained(str(model_dir)))
    rng = random.Random(1)
    prompts = ["".join(rng.choice(words) for _ in range(prompt_tokens)) for _ in range(requests)]
    with serving(model_dir, requests, worker_flags, log_path, ready_timeout) as target:
        asyncio.run(_flood(target, prompts[:4], 8))  # warm-up: prefill kernels, connections
        result = asyncio.run(_flood(target, prompts, new))
        short = ["".join(rng.choice(words) for _ in range(single_prompt_tokens)) for _ in range(singles)]
        ttfts = asyncio.run(_one_at_a_time(target, short, 8))
        result["single_ttft_p50"] = ttfts[len(ttfts) // 2]
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="config.json + tokenizer files")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--log", type=Path, default=None, help="where the fleet's output goes")
    args, worker_flags = parser.parse_known_args(argv)
    result = flood(args.model_dir, args.requests, args.prompt_tokens, args.new_tokens, worker_flags, args.log)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
