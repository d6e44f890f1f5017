"""Output tokens/s through the full fleet path beside transformers' generate, in one run.

Starts a real fleet (embedded Redis, one gateway, one worker) on loopback, sends the same greedy
prompts at concurrency 1 and 16 over HTTP, then runs transformers' `generate` on the same model
and prompts: one at a time, and as one static padded batch of 16. Prints a markdown table.

    python -m load.bench_http --requests 16 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from common.config import DEFAULT_MODEL_ID
from common.model_source import resolve_model
from genfleet.embedded_redis import EmbeddedRedis

PROMPTS = [
    "Write a short story about a robot learning to paint.",
    "Explain how a refrigerator works.",
    "List ten facts about the Moon.",
    "Describe the water cycle for a child.",
    "What makes a good cup of coffee?",
    "Summarize the plot of a heist movie.",
    "Give advice to a new programmer.",
    "Why is the sky blue?",
]


def _one(base: str, prompt: str, max_new: int) -> int:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new, "details": True, "ignore_eos": True}}
    r = httpx.post(f"{base}/generate", json=body, timeout=600)
    r.raise_for_status()
    return int(r.json()["details"]["generated_tokens"])


def bench_fleet(base: str, prompts: list[str], concurrency: int, max_new: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(lambda p: _one(base, p, max_new), prompts))
    return tokens / (time.perf_counter() - started)


def bench_transformers(model_dir: str, prompts: list[str], max_new: int, batch: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    tokens = 0
    started = time.perf_counter()
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i : i + batch], return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False)
        tokens += (out.shape[1] - enc.input_ids.shape[1]) * out.shape[0]
    return tokens / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    prompts = [PROMPTS[i % len(PROMPTS)] + f" ({i})" for i in range(args.requests)]
    model_dir = str(resolve_model(DEFAULT_MODEL_ID))

    from tests.integration.fleet import FleetProcesses  # the same launcher the tests use

    rows: list[tuple[str, float]] = []
    with EmbeddedRedis() as server:
        fleet = FleetProcesses(server.url, "bench").start(num_workers=1)
        try:
            _one(fleet.base_url, "warm up", 4)
            for conc in (1, 16):
                runs = [bench_fleet(fleet.base_url, prompts, conc, args.max_new_tokens) for _ in range(args.repeats)]
                rows.append((f"genfleet HTTP, concurrency {conc}", statistics.median(runs)))
                print(f"{rows[-1][0]}: {rows[-1][1]:.1f} tok/s", flush=True)
        finally:
            fleet.stop()
    rows.append(("transformers generate, sequential", bench_transformers(model_dir, prompts, args.max_new_tokens, 1)))
    rows.append(("transformers generate, static batch 16", bench_transformers(model_dir, prompts, args.max_new_tokens, 16)))
    print(f"{rows[-2][0]}: {rows[-2][1]:.1f} tok/s; {rows[-1][0]}: {rows[-1][1]:.1f} tok/s", flush=True)
    base = rows[2][1]
    print(f"\n{args.requests} requests x {args.max_new_tokens} new tokens, SmolLM2-135M float32 CPU, greedy\n")
    print("| path | output tok/s | vs transformers sequential |")
    print("|---|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
