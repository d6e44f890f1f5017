"""Where a decode step's host time goes, on a GPU: the critical path between two forwards.

Runs the engine on a random-weight model (load/bench_gpu.py's shapes) at a fixed batch size and
reports, per decode step: the wall time, the host time from the end of the previous step's sync
to the launch of this step's graph replay (the GPU idles through it), and the time the host
waits in the step's one sync. Then a cProfile of the same loop, top functions by own time.

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
    from load.bench_gpu import _ALIASES, write_model_dir
    from worker import cuda_graphs, model_runner
    from worker.engine import EngineRequest, LLMEngine
    from worker.model_runner import ModelRunner

    marks: dict[str, list[float]] = {"launch": [], "synced": []}
    replay = cuda_graphs.DecodeGraphs.try_replay

    def timed_replay(self, inputs, meta):  # type: ignore[no-untyped-def]
        marks["launch"].append(time.perf_counter())
        return replay(self, inputs, meta)

    sample = model_runner.ModelRunner._sample

    def timed_sample(self, *a):  # type: ignore[no-untyped-def]
        out = sample(self, *a)
        marks["synced"].append(time.perf_counter())
        return out

    cuda_graphs.DecodeGraphs.try_replay = timed_replay  # type: ignore[method-assign]
    model_runner.ModelRunner._sample = timed_sample  # type: ignore[method-assign]
    shape = _ALIASES.get(args.model, args.model)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_model_dir(Path(tmp), shape)
        config = WorkerConfig(device="cuda", dtype="bfloat16", max_batch_size=256, prefix_caching=False,
                              max_batch_total_tokens=args.batch * (128 + 2 * args.steps + 64))
        runner = ModelRunner(config, model_dir, load=False)
    engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                       max_model_len=runner.max_model_len)
    params = SamplingParams(max_new_tokens=2 * args.steps + 16, ignore_eos=True)
    for i in range(args.batch):
        engine.add_request(EngineRequest(f"r{i}", list(range(100, 228)), params, seed=i, arrival_time=time.time()))
    for _ in range(20):  # prefill and warm-up steps
        engine.step()
    torch.cuda.synchronize()
    for v in marks.values():
        v.clear()
    started = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    wall = (time.perf_counter() - started) / args.steps
    launch, synced = marks["launch"], marks["synced"]
    gaps = [launch[i + 1] - synced[i] for i in range(len(synced) - 1)]
    waits = [synced[i] - launch[i] for i in range(len(synced))]
    print(f"{shape} batch {args.batch}: step {wall * 1e6:.0f} µs; host gap sync->next launch median "
          f"{statistics.median(gaps) * 1e6:.0f} µs; launch->synced median {statistics.median(waits) * 1e6:.0f} µs")
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
