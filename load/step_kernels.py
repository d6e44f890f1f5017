"""Where a decode step's time goes on the device: the kernels of N engine steps, per step.

The requests are brought past their prefill, N decode steps are timed on the host clock (the
engine as it serves: graphs, overlapped scheduling), then N more run under torch.profiler, whose
CUDA activity lists every kernel and copy, those replayed inside a CUDA graph included. The line
it returns says the wall time per step, the device time of its kernels per step (the rest is
time the device waits for the host) and the kernels that take the most.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["decode_kernels"]


def decode_kernels(runner: Any, config: Any, prompts: list[list[int]], steps: int, top: int = 8) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from common.sampling_params import SamplingParams
    from worker.engine import LLMEngine
    from worker.request import Request, RequestKey

    engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                       max_model_len=runner.max_model_len)
    params = SamplingParams(max_new_tokens=2 * steps + 8, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(Request(RequestKey(f"k{i}", 0), prompt, params, seed=i, arrival_time=time.time()))
    while engine.stats().last_batch_num_decode < len(prompts):  # past the prefill
        engine.step()
    for _ in range(4):
        engine.step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    wall_us = (time.perf_counter() - started) / steps * 1e6
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    while engine.has_unfinished_requests():
        engine.step()
    events = sorted((e for e in prof.key_averages() if e.device_type.name == "CUDA"),
                    key=lambda e: e.self_device_time_total, reverse=True)
    busy = sum(e.self_device_time_total for e in events) / steps
    launches = sum(e.count for e in events) / steps
    head = ", ".join(f"{_short(e.key)} {e.self_device_time_total / steps:.0f} ({e.count / steps:g}x)"
                     for e in events[:top])
    return (f"decode batch {len(prompts)}: {wall_us:.0f} µs per step (wall, {steps} steps), kernels "
            f"{busy:.0f} µs per step ({launches:.0f} launches); most: {head}")


def _short(name: str) -> str:
    # cuBLAS and CUTLASS names run to hundreds of characters; their head says enough.
    return name if len(name) <= 48 else name[:45] + "..."
