"""Where a decode step's host time goes, on a GPU: the critical path between two forwards.

Runs the engine on a random-weight model (load/bench_gpu.py's shapes) at a fixed batch size and
reports, per decode step, one step at a time and overlapped: the wall time and the time the host
spends blocked on the device (the rest is host work; one step at a time the device idles
through it). Then a cProfile of the overlapped loop, top functions by own time.

    python -m load.step_profile --model 8b --batch 1 --steps 200
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="8b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    import torch

    from common.config import WorkerConfig
    from common.sampling_params import SamplingParams
    from load.shapes import ALIASES, write_model_dir
    from worker import model_runner
    from worker.engine import LLMEngine
    from worker.request import Request, RequestKey
    from worker.model_runner import ModelRunner

    blocked: list[float] = []
    wait = model_runner.ModelRunner.wait

    def timed_wait(self, step):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        out = wait(self, step)
        blocked.append(time.perf_counter() - started)
        return out

    model_runner.ModelRunner.wait = timed_wait  # type: ignore[method-assign]
    shape = ALIASES.get(args.model, args.model)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_model_dir(Path(tmp), shape)
        config = WorkerConfig(device="cuda", dtype="bfloat16", max_batch_size=256, prefix_caching=False,
                              max_batch_total_tokens=args.batch * (128 + 3 * args.steps + 128))
        runner = ModelRunner(config, model_dir, load=False)
    engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                       max_model_len=runner.max_model_len)
    params = SamplingParams(max_new_tokens=3 * args.steps + 64, ignore_eos=True)
    for i in range(args.batch):
        engine.add_request(Request(RequestKey(f"r{i}", 0), list(range(100, 228)), params, seed=i, arrival_time=time.time()))
    for _ in range(20):  # prefill and warm-up steps
        engine.step()
    torch.cuda.synchronize()
    for overlap in (False, True):
        engine.overlap = overlap
        engine.step()  # settle into the mode
        blocked.clear()
        started = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        wall = (time.perf_counter() - started) / args.steps
        print(f"{shape} batch {args.batch}, overlap {overlap}: step {wall * 1e6:.0f} µs; host blocked on the "
              f"device {statistics.median(blocked) * 1e6:.0f} µs per step (median), so busy "
              f"{(wall - statistics.median(blocked)) * 1e6:.0f} µs", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        engine.step()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
