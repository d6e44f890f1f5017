"""Engine-only throughput (no HTTP, no Redis): the worker's engine on the real model, in-process.

Comparisons in one run, same model, same requests:
1. one request at a time vs continuous batching (chunked prefill, paged KV), and with
   --transformers, transformers' generate over one static batch (TTFT not measured there);
2. a shared-prefix workload with the prefix cache off vs on.

    python -m load.bench_offline --requests 32 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

from common.config import DEFAULT_MODEL_ID, WorkerConfig
from common.model_source import resolve_model
from common.sampling_params import SamplingParams
from worker.engine import LLMEngine
from worker.request import Request, RequestKey
from worker.model_runner import ModelRunner


def _run(engine: LLMEngine, prompts: list[list[int]], max_new: int, concurrent: bool) -> tuple[float, int, float]:
    """Returns (seconds, output tokens, mean TTFT seconds)."""
    params = SamplingParams(max_new_tokens=max_new, ignore_eos=True)
    produced = 0
    first: dict[RequestKey, float] = {}
    started = time.perf_counter()
    submitted: dict[RequestKey, float] = {}

    def drain() -> None:
        nonlocal produced
        while engine.has_unfinished_requests():
            for out in engine.step():
                produced += len(out.new_token_ids)
                first.setdefault(out.key, time.perf_counter())

    for i, prompt in enumerate(prompts):
        key = RequestKey(f"r{i}-{time.perf_counter_ns()}", 0)
        submitted[key] = time.perf_counter()
        engine.add_request(Request(key, prompt, params, seed=i, arrival_time=time.time()))
        if not concurrent:
            drain()
    drain()
    elapsed = time.perf_counter() - started
    ttft = sum(first[r] - submitted[r] for r in submitted) / len(submitted)
    return elapsed, produced, ttft


def _transformers_static(model_dir: Path, prompts: list[list[int]], max_new: int, device: str) -> tuple[float, int]:
    """One left-padded static batch through transformers' generate: what the engine replaces."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)  # (B, T)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)  # (B, T)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=max_new,
                             do_sample=False, pad_token_id=0)
    return time.perf_counter() - started, (out.shape[1] - width) * len(prompts)


def _engine(config: WorkerConfig, runner: ModelRunner) -> LLMEngine:
    return LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                     max_model_len=runner.max_model_len)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-id", default=DEFAULT_MODEL_ID)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--prefix-tokens", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--transformers", action="store_true", help="add transformers' static batch as a baseline")
    args = parser.parse_args(argv)

    model_dir = Path(resolve_model(args.model_id))
    config = WorkerConfig(device=args.device, max_batch_total_tokens=65536, max_batch_prefill_tokens=2048)
    runner = ModelRunner(config, model_dir)
    rng = random.Random(0)
    vocab = runner.vocab_size
    mix = [[rng.randrange(100, vocab) for _ in range(rng.randint(16, 256))] for _ in range(args.requests)]
    shared = [rng.randrange(100, vocab) for _ in range(args.prefix_tokens)]
    prefixed = [shared + [rng.randrange(100, vocab) for _ in range(rng.randint(8, 32))] for _ in range(args.requests)]

    _run(_engine(config, runner), mix[:2], 4, True)  # warm-up
    rows = []
    for name, concurrent in (("one request at a time", False), ("continuous batching", True)):
        secs, toks, ttft = _run(_engine(replace(config, prefix_caching=False), runner), mix, args.max_new_tokens, concurrent)
        rows.append((f"synthetic mix, {name}", args.requests / secs, toks / secs, ttft))
    if args.transformers:
        secs, toks = _transformers_static(model_dir, mix, args.max_new_tokens, args.device)
        rows.append(("synthetic mix, transformers generate, one static batch", args.requests / secs, toks / secs,
                     float("nan")))
    for name, on in (("prefix cache off", False), ("prefix cache on", True)):
        secs, toks, ttft = _run(_engine(replace(config, prefix_caching=on), runner), prefixed, args.max_new_tokens, True)
        rows.append((f"{args.prefix_tokens}-token shared prefix, {name}", args.requests / secs, toks / secs, ttft))

    print(f"\n{args.requests} requests, {args.max_new_tokens} new tokens each, {args.model_id} on {runner.device} ({runner.dtype})\n")
    print("| workload | requests/s | output tok/s | mean TTFT (s) |")
    print("|---|---|---|---|")
    for name, rps, tps, ttft in rows:
        shown = "n/a" if math.isnan(ttft) else f"{ttft:.2f}"
        print(f"| {name} | {rps:.2f} | {tps:.1f} | {shown} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
