"""The engine's host cost per decode step, without a model: schedule, update and block bookkeeping.

A runner that samples instantly stands in for the model, so what is timed is the Python the
engine runs per step (what overlapped scheduling must hide behind the device's work).

    python -m load.engine_host --batch 256 --steps 200
"""

from __future__ import annotations

import argparse
import sys
import time

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from worker.batch import NOT_SAMPLED, ScheduledBatch, StepOutput
from worker.engine import LLMEngine
from worker.request import Request, RequestKey


class _InstantRunner:
    can_overlap = False
    uniform_drafts = False

    def execute(self, batch: ScheduledBatch) -> StepOutput:
        reqs = batch.requests
        sampled = [7 if r.do_sample else NOT_SAMPLED for r in reqs]
        return StepOutput(batch.step, [r.key for r in reqs], sampled, [0.0] * len(reqs), [[] for _ in reqs], {})

    def launch(self, batch: ScheduledBatch, previous: object, *, defer_sample: bool = False) -> StepOutput:
        return self.execute(batch)

    def sample(self, handle: StepOutput, ended: frozenset[RequestKey]) -> None:
        pass  # never deferred: it samples at launch

    def wait(self, handle: StepOutput) -> StepOutput:
        return handle


def step_micros(batch: int, steps: int) -> float:
    """CPU microseconds per decode step at `batch` running requests (128-token prompts)."""
    config = WorkerConfig(max_batch_size=batch, max_batch_prefill_tokens=128 * batch, waiting_served_ratio=0.0)
    engine = LLMEngine(config, _InstantRunner(), num_blocks=batch * (128 + steps + 64) // 16 + 64,
                       eos_token_ids=frozenset({0}), max_model_len=8192)
    params = SamplingParams(max_new_tokens=steps + 64, ignore_eos=True)
    for i in range(batch):
        engine.add_request(Request(RequestKey(f"r{i}", 0), list(range(100 + i, 228 + i)), params, i, time.time()))
    for _ in range(5):  # prefill, then settle into decoding
        engine.step()
    started = time.process_time()
    for _ in range(steps):
        engine.step()
    return (time.process_time() - started) / steps * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    runs = [step_micros(args.batch, args.steps) for _ in range(args.repeats)]
    print(f"batch {args.batch}: {min(runs):.0f} µs of host CPU per decode step (min of {args.repeats}: "
          f"{', '.join(f'{r:.0f}' for r in runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
