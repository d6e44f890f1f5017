"""Where a CPU decode step goes, per phase, at several batch sizes: the real default model, in-process.

For each batch size, that many requests of --context prompt tokens are prefilled, then --steps
decode steps are timed, each split into: input building (`prepare_inputs`), the layers, the LM
head, sampling, reading the results (`wait`), and the engine's own Python
(scheduling and update: the rest of `engine.step`). The forward is then profiled by torch and its
op time bucketed: GEMMs, attention (the KV store, page gathers, the fused attention) and the rest
(norms, rotary, activations, glue), scaled to the forward and sampling's timed total. Wall times are medians; on a shared machine, also read the CPU
time column (process time: the work done, whatever the neighbours take).

    python -m load.step_profile_cpu --dtype bfloat16 --batch 1,4,16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

_BUCKETS = (
    ("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn", "onednn")),
    ("attention", ("scaled_dot_product", "index_select", "index_copy", "index_put", "aten::index", "softmax",
                   "paged_decode_attention", "store_kv")),  # the last two: worker/cpu_native.cpp's
)
_PHASES = ("inputs", "layers", "LM head", "sampling", "results")


def _bucket(name: str) -> str:
    return next((b for b, keys in _BUCKETS if any(k in name for k in keys)), "other ops")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch", default="1,4,16")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from common.config import DEFAULT_MODEL_ID, WorkerConfig
    from common.model_source import resolve_model
    from common.sampling_params import SamplingParams
    from worker.engine import LLMEngine
    from worker.model_runner import ModelRunner
    from worker.request import Request, RequestKey

    config = WorkerConfig(device="cpu", dtype=args.dtype, max_batch_size=256, prefix_caching=False)
    runner = ModelRunner(config, resolve_model(DEFAULT_MODEL_ID))
    spent: dict[str, list[float]] = defaultdict(list)

    def timed(phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[phase].append(time.perf_counter() - started)
        return wrapper

    for phase, name in zip(_PHASES, ("prepare_inputs", "_forward", "_logits_of", "_sample", "wait"), strict=True):
        setattr(runner, name, timed(phase, getattr(runner, name)))
    print(f"SmolLM2 decode on the CPU, {runner.dtype}, {torch.get_num_threads()} threads, context {args.context}; "
          "ms per step (medians)\n")
    print("| batch | step wall | step CPU | " + " | ".join(_PHASES) + " | engine Python | "
          "ops: GEMM | attention | other ops |")
    print("|---" * 12 + "|")
    for batch in (int(b) for b in args.batch.split(",")):
        engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                           max_model_len=runner.max_model_len)
        params = SamplingParams(max_new_tokens=3 * args.steps + 16, ignore_eos=True)
        for i in range(batch):
            prompt = [100 + (i * 7 + j) % 20000 for j in range(args.context)]
            engine.add_request(Request(RequestKey(f"r{i}", 0), prompt, params, seed=i, arrival_time=time.time()))
        while any(r.num_computed_tokens < args.context for r in engine.scheduler.running) or engine.scheduler.waiting:
            engine.step()
        engine.step()
        spent.clear()
        walls, cpus = [], []
        for _ in range(args.steps):
            started, cpu = time.perf_counter(), time.process_time()
            engine.step()
            walls.append(time.perf_counter() - started)
            cpus.append(time.process_time() - cpu)
        assert all(spent[ph] for ph in _PHASES), "a phase the runner no longer calls by that name"
        phases = {ph: statistics.median(spent[ph]) * 1e3 for ph in _PHASES}
        wall = statistics.median(walls) * 1e3
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                engine.step()
        ops: dict[str, float] = defaultdict(float)
        for event in prof.key_averages():
            ops[_bucket(event.key)] += event.self_cpu_time_total / 1e3 / 3
        # The torch ops of the forward and sampling, scaled to their timed total (the profiler's overhead out).
        share = (phases["layers"] + phases["LM head"] + phases["sampling"]) / max(sum(ops.values()), 1e-9)
        print(f"| {batch} | {wall:.1f} | {statistics.median(cpus) * 1e3:.1f} | "
              + " | ".join(f"{phases[ph]:.1f}" for ph in _PHASES)
              + f" | {wall - sum(phases.values()):.1f} | "
              + " | ".join(f"{ops[b] * share:.1f}" for b in ("gemm", "attention", "other ops")) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
