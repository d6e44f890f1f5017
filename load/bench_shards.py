"""`python -m load.bench_gpu --num-shard 1,2,4`: (a) and (b) per rank count, with the all-reduce's share.

For each N the benchmark process is rank 0 of a real sharded runner (worker/parallel/launch.py
starts ranks 1..N-1 on the next GPUs; random weights, so nothing is read). It runs (a) batch 1
and (b) 64 requests, 128 in / 256 out, through the engine, then profiles 32 decode steps of (b)
on rank 0 with torch.profiler: the NCCL kernels' device time per step (every all-reduce of the
layers, the embedding's, and the logits' gather) and their share of the step's device time.
N = 1 is the unsharded runner (no process group at all), the row the others compare with.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from load.timed_runs import release_memory, run_engine

__all__ = ["shard_rows"]


def _collective_share(runner: Any, config: Any, prompts: list[list[int]], steps: int) -> tuple[float, float]:
    """(NCCL device µs per decode step, its share of the step's device time) over `steps` steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from common.sampling_params import SamplingParams
    from worker.engine import LLMEngine
    from worker.request import Request, RequestKey

    engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                       max_model_len=runner.max_model_len)
    params = SamplingParams(max_new_tokens=steps + 8, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(Request(RequestKey(f"p{i}", 0), prompt, params, seed=i, arrival_time=time.time()))
    while engine.stats().last_batch_num_decode < len(prompts):  # past the prefill
        engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in events)
    nccl = sum(e.self_device_time_total for e in events if "nccl" in e.key.lower())
    while engine.has_unfinished_requests():
        engine.step()
    return nccl / steps, (nccl / total if total else 0.0)


def shard_rows(shape: str, model_dir: Path, config: Any, counts: list[int]) -> list[str]:
    """One markdown row per rank count: (a) and (b) tok/s (x the first count's), (b)'s NCCL µs per
    decode step and its share of the step."""
    import torch

    from worker.model_runner import ModelRunner
    from worker.parallel.launch import start_ranks

    rng = random.Random(0)
    rows = []
    base: dict[str, float] = {}
    # A count of 1 runs twice: as today's worker (no group) and as a one-rank group, the whole
    # sharded path (NCCL all-reduces in the graphs, the logits gather) at world size 1.
    runs = [(n, grouped) for n in counts for grouped in ((False, True) if n == 1 else (True,))]
    for n, grouped in runs:
        # The ranks read these settings from their command line: the model directory and random weights too.
        run_config = replace(config, fleet=replace(config.fleet, model_id=str(model_dir)), random_weights=True,
                             num_shard=n if grouped else None)
        group = start_ranks(run_config, n, torch.device("cuda")) if grouped else None
        try:
            runner = ModelRunner(run_config, model_dir, load=False, shards=group)
            size = runner.vocab_size

            def prompts(k: int) -> list[list[int]]:
                return [[rng.randrange(100, size) for _ in range(128)] for _ in range(k)]

            run_engine(runner, run_config, prompts(2), 8)  # warm-up
            a = run_engine(runner, run_config, prompts(1), 256)["tok_s"]
            b = run_engine(runner, run_config, prompts(64), 256)["tok_s"]
            us, share = _collective_share(runner, run_config, prompts(64), 32) if grouped else (0.0, 0.0)
        finally:
            runner = None  # its KV pool and weights go before the next count's runner is built
            release_memory()
            if group is not None:
                group.close()
        base.setdefault("a", a)
        base.setdefault("b", b)
        ranks = f"{n} (NCCL group)" if n == 1 and grouped else str(n)
        rows.append(f"| {shape} | {ranks} | {a:,.1f} ({a / base['a']:.2f}x) | {b:,.1f} ({b / base['b']:.2f}x) | "
                    f"{us:.0f} | {100 * share:.1f}% |")
    return rows
