"""What a worker's first mixed step costs: one request decoding while another's prompt arrives.

Such a step (decodes beside a prompt) runs eagerly, not as a CUDA graph, and its kernels see
arguments no start-up step gave them (a prompt's part of the batch starting mid-tensor, an odd
token count), so Triton may compile new specializations of them the first time. The probe runs
that scene twice on one runner and reports each run's steps, the kernels compiled in it and the
slowest step (load/step_timeline.py), so the first run's extra time and its cause are visible.
The bench's guided rows have none: their requests all start in their first step.
"""

from __future__ import annotations

import time
from typing import Any

from load.step_timeline import KernelCompiles, Timeline, TimedRunner

__all__ = ["mixed_step_probe"]


def mixed_step_probe(runner: Any, config: Any, vocab: int) -> list[str]:
    """Two runs of: a 133-token prompt, three steps, then a 127-token prompt beside its decodes."""
    from common.sampling_params import SamplingParams
    from worker.engine import LLMEngine
    from worker.request import Request, RequestKey

    lines = []
    for attempt in ("first", "again"):
        timed = TimedRunner(runner)
        engine = LLMEngine(config, timed, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                           max_model_len=runner.max_model_len)
        params = SamplingParams(max_new_tokens=8, ignore_eos=True)
        started = time.perf_counter()
        with KernelCompiles() as kernels:
            timeline = Timeline(timed, kernels)
            engine.add_request(Request(RequestKey(f"decoding-{attempt}", 0), [(7 * i) % vocab for i in range(133)], params,
                                       seed=0, arrival_time=time.time()))
            for _ in range(3):
                timeline.step(engine.last_batch, engine.step())
            engine.add_request(Request(RequestKey(f"arriving-{attempt}", 0), [(11 * i) % vocab for i in range(127)], params,
                                       seed=1, arrival_time=time.time()))
            while engine.has_unfinished_requests():
                timeline.step(engine.last_batch, engine.step())
        mixed = sum(1 for s in timeline.steps if 0 < s.decodes < s.rows)
        compiled = [c for s in timeline.steps for c in s.compiles]
        lines.append(f"mixed-step probe, {attempt}: {(time.perf_counter() - started) * 1e3:.0f} ms for "
                     f"{len(timeline.steps)} steps ({mixed} mixed); {len(compiled)} kernels compiled"
                     + (" (" + ", ".join(f"{name} {ms:.0f} ms" for name, ms in compiled) + ")" if compiled else "")
                     + f"; slowest step {max(s.wall_ms for s in timeline.steps):.1f} ms")
    return lines
