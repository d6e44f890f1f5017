"""Timed generation, what the benchmarks' rows are made of: genfleet's engine in-process over given
prompts (every step on a timeline: throughput, TTFT and TPOT medians, the slowest step), and
transformers `generate` on a static batch as the baseline beside it.

load/bench_gpu.py, load/bench_variants.py, load/bench_shards.py and load/bench_lora.py run these.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

from load.step_timeline import KernelCompiles, Timeline, TimedRunner

__all__ = ["run_engine", "hf_generate", "release_memory"]


def run_engine(runner: Any, config: Any, prompts: list[list[int]], new: int, grammars: Any = None,
               adapters: tuple[str, ...] = (), speculator: Any = None, **knobs: Any) -> dict[str, float]:
    """`adapters`: request i is served by adapters[i % len] (LoRA ids loaded in the runner); () = the base.
    `speculator`: heads that draft (worker/speculative/heads.py) instead of n-gram lookup."""
    import torch

    from common.gc_settings import settle_gc
    from common.sampling_params import SamplingParams
    from worker.engine import LLMEngine
    from worker.request import Request, RequestKey

    settle_gc()  # as a worker process does once its model is loaded (its host work is what (c) measures)
    timed = TimedRunner(runner)
    engine = LLMEngine(config, timed, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                       max_model_len=runner.max_model_len, grammars=grammars, speculator=speculator)
    params = SamplingParams(max_new_tokens=new, ignore_eos=True, **knobs)
    if runner.device.type == "cuda":  # load/bench_lora.py runs it on the CPU too
        torch.cuda.synchronize()
    computed = 0
    with KernelCompiles() as kernels:
        timeline = Timeline(timed, kernels)
        for i, prompt in enumerate(prompts):
            adapter = adapters[i % len(adapters)] if adapters else ""
            engine.add_request(Request(RequestKey(f"r{i}", 0), prompt, params, seed=i, arrival_time=time.time(),
                                       adapter_id=adapter))
        while engine.has_unfinished_requests():
            outs = engine.step()
            computed += engine.last_batch.num_tokens if engine.last_batch is not None else 0
            timeline.step(engine.last_batch, outs)
    elapsed = time.perf_counter() - timeline.started
    produced = sum(timeline.tokens.values())
    ttft = sorted(timeline.first.values())
    tpot = sorted((timeline.last[r] - timeline.first[r]) / max(1, timeline.tokens[r] - 1) for r in timeline.first)
    return {
        "seconds": elapsed, "tok_s": produced / elapsed, "steps": engine.stats().steps,
        "computed_tokens": computed, "preemptions": engine.stats().num_preemptions,
        "ttft_p50": ttft[len(ttft) // 2], "tpot_p50": tpot[len(tpot) // 2], "ttft_max": ttft[-1],
        "produced": produced, "errors": len(timeline.errors),
        "slowest_step": max(s.wall_ms for s in timeline.steps) / 1e3, "timeline": timeline,
    }


def hf_generate(model_dir: Path, batch: int, prompt: int, new: int) -> float:
    import torch
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(model_dir)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    ids = torch.randint(100, cfg.vocab_size, (batch, prompt), device="cuda")
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    model.generate(ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = model.generate(ids, **kwargs)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    assert out.shape[1] == prompt + new
    del model
    release_memory()
    return batch * new / elapsed


def release_memory() -> None:
    """Frees what the caller has dropped (a runner, a model) and hands its CUDA blocks back."""
    import torch

    gc.unfreeze()  # run_engine froze every object (settle_gc), the runner's too: else none is freed
    gc.collect()
    torch.cuda.empty_cache()
