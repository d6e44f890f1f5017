"""The whole host path of a step on workload (c), without a device: µs of host CPU per step and per token.

load/bench_gpu.py's workload (c) (requests of 1024 prompt tokens and 128 new ones, all at t=0,
greedy, ignore_eos; --max-batch-prefill-tokens 8192) runs mixed steps: up to --max-batch-size
decodes plus the prompt chunks admitted as requests end. On a GPU a small model's step is ~1 ms of
device work, so the host decides the figure. This script runs that workload through the real
engine (scheduling, block bookkeeping, the overlapped placeholders, update) and the real model
runner's host side on the CPU: `ModelRunner.launch / sample / wait` with their input building
(pack_inputs, the placeholders, attention metadata), sampler.prepare, the sampler over tiny logits,
the results' packing and read_results; only the forward and the LM head are replaced by a
preallocated zero tensor. Then (with --output) the worker's output side on the same outputs:
worker/output.py's per-token handling with the real tokenizer (incremental detokenizing, stop
checks, the Token events) and the msgpack encoding of each step's EventBatch, timed apart (in the
fleet it runs on the output thread, beside the engine's).

Not measured: what only a GPU does (kernel launches of the eager forward, pinned copies, CUDA
events, graph replays). Figures are process CPU time, so other jobs on the machine count less
than in wall time; compare runs made in one invocation.

    python -m load.host_path --batch 64,256 --requests 512 --output --phases
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from worker.attention import PagedAttentionBackend
from worker.block_tables import BlockTables
from worker.engine import LLMEngine
from worker.model_runner import ModelRunner
from worker.request import Request, RequestKey
from load.part_times import PartTimes
from worker.watermark import Watermark

_VOCAB = 256  # logits columns the sampler runs over (the forward is not run: its cost is the device's)
_HIDDEN = 8
_PROMPT, _NEW = 1024, 128
_PHASES_ACTIVE: PartTimes | None = None  # --phases: entered for the whole run


class HostRunner(ModelRunner):
    """ModelRunner's host side on the CPU: every step goes through launch, sample and wait, as on a
    GPU with overlap, but the forward and LM head return zeros (no model is built)."""

    def __init__(self, config: WorkerConfig) -> None:  # noqa: D107 - no super(): no model, no KV tensors
        self.config = config
        self.device = torch.device("cpu")
        self.block_size = config.block_size
        self.shards = None
        self.vocab_size = _VOCAB
        self.eos_token_ids = frozenset({0})
        self.watermark = Watermark(config.fleet.watermark_gamma, config.fleet.watermark_delta)
        self.adapters = None
        self.graphs = None
        self.attention = PagedAttentionBackend()
        self.block_tables = BlockTables()
        self.mask_seconds = 0.0
        self.draft_model = None
        self.heads = None
        self.speculator = None
        self.can_overlap = True  # the engine schedules as it does on a GPU
        self.uniform_drafts = False
        self._zeros_hidden = torch.zeros(config.max_batch_prefill_tokens + config.max_batch_size, _HIDDEN)
        # Row r prefers token r % _VOCAB, so sampled ids vary (the engine and results see real lists).
        self._logits = torch.eye(_VOCAB).repeat(config.max_batch_size // _VOCAB + 1, 1)

    def _eager(self, inputs: Any, lora: Any = None) -> torch.Tensor:
        self.attention.prepare_metadata(inputs, [])  # what an eager step builds before its layers
        return self._zeros_hidden[: inputs.input_ids.shape[0]]

    def _logits_of(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._logits[: hidden.shape[0]]


class _OutputSide:
    """worker/output.py's per-step work on the engine's outputs, without Redis: handling (detokenize,
    stop checks, events) and the encoding of each step's EventBatch."""

    def __init__(self, tokenizer: Any, text_ids: list[int]) -> None:
        from worker.output import OutputProcessor

        self.proc = OutputProcessor(None, None, "w0", tokenizer, on_stop=lambda key: None)  # type: ignore[arg-type]
        self.text_ids = text_ids
        self.handle_s = self.encode_s = 0.0

    def accept(self, key: RequestKey, prompt: list[int], params: SamplingParams) -> None:
        from common.protocol import GenerateRequest

        request = GenerateRequest(key.req_id, key.attempt, "g0", "m", prompt, params)
        self.proc._handle(("accept", key, request, 0, None), {"g0": []})

    def step(self, step: int, outputs: list[Any]) -> None:
        from common.protocol import EventBatch, encode

        for out in outputs:  # real text instead of the stand-in runner's ids: what detokenizing meets
            n = len(self.proc._live[out.key].detokenizer._ids) if out.key in self.proc._live else 0
            out.new_token_ids = [self.text_ids[(n + j) % len(self.text_ids)] for j in range(len(out.new_token_ids))]
        started = time.process_time()
        per_gateway: dict[str, list[Any]] = {"g0": []}
        self.proc._handle(("step", step, outputs), per_gateway)
        middle = time.process_time()
        for events in per_gateway.values():
            encode(EventBatch("w0", step, events))
        self.handle_s += middle - started
        self.encode_s += time.process_time() - middle


# The phases --phases times apart (load/part_times.py), in process CPU time: (name, module, attribute path).
_PHASES = (
    ("schedule", "worker.scheduler", "Scheduler.schedule"),
    ("advance", "worker.engine", "LLMEngine._advance"),
    ("pack inputs", "worker.model_runner", "pack_inputs"),
    ("placeholders", "worker.model_runner", "ModelRunner._fill_placeholders"),
    ("sampler.prepare", "worker.sampler", "prepare"),
    ("sample", "worker.model_runner", "ModelRunner._sample"),
    ("read results", "worker.model_runner", "read_results"),
    ("update", "worker.engine", "LLMEngine._update"),
)


def run(batch: int, requests: int, output: _OutputSide | None) -> dict[str, float]:
    config = WorkerConfig(max_batch_size=batch, max_batch_prefill_tokens=8192, prefix_caching=False)
    runner = HostRunner(config)
    num_blocks = requests * -(-(_PROMPT + _NEW) // config.block_size) + 64
    engine = LLMEngine(config, runner, num_blocks=num_blocks, eos_token_ids=runner.eos_token_ids,
                       max_model_len=8192)
    params = SamplingParams(max_new_tokens=_NEW, ignore_eos=True)
    for i in range(requests):
        prompt = [100 + (i * 7 + j) % 40000 for j in range(_PROMPT)]
        key = RequestKey(f"r{i}", 0)
        engine.add_request(Request(key, prompt, params, seed=i, arrival_time=time.time()))
        if output is not None:
            output.accept(key, prompt, params)
    engine_s = 0.0
    steps = tokens = full_steps = 0
    full_s = 0.0  # steps that ran at the batch cap: the steady state of (c)
    while engine.has_unfinished_requests():
        started = time.process_time()
        outs = engine.step()
        took = time.process_time() - started
        engine_s += took
        steps += 1
        tokens += sum(len(o.new_token_ids) for o in outs)
        if len(engine.scheduler.running) >= batch:
            full_steps += 1
            full_s += took
        if output is not None and outs:
            output.step(steps, outs)
    result = {"steps": steps, "tokens": tokens, "engine_us_step": engine_s / steps * 1e6,
              "engine_us_token": engine_s / tokens * 1e6,
              "full_us_step": full_s / max(1, full_steps) * 1e6, "full_steps": full_steps}
    for name, seconds in (_PHASES_ACTIVE.seconds.items() if _PHASES_ACTIVE is not None else ()):
        if seconds:  # a phase this run never called has no figure
            result[f"phase {name}"] = seconds / steps * 1e6
    if _PHASES_ACTIVE is not None:
        _PHASES_ACTIVE.reset()
    if output is not None:
        result["handle_us_token"] = output.handle_s / tokens * 1e6
        result["encode_us_token"] = output.encode_s / tokens * 1e6
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", default="64,256", help="comma list of --max-batch-size values")
    parser.add_argument("--requests", type=int, default=512, help="requests of workload (c) per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", action="store_true", help="also time the output side (needs the tokenizer)")
    parser.add_argument("--tokenizer-dir", type=Path,
                        default=Path.home() / ".cache/genfleet/converted/HuggingFaceTB--SmolLM2-135M-Instruct")
    parser.add_argument("--default-gc", action="store_true",
                        help="keep Python's collector settings (else common/gc_settings.py's, as a worker's)")
    parser.add_argument("--phases", action="store_true", help="also µs per step in each phase of _PHASES")
    parser.add_argument("--profile", action="store_true", help="a cProfile of one run per batch, top 25 by own time")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not args.default_gc:
        from common.gc_settings import settle_gc

        settle_gc()
    global _PHASES_ACTIVE
    if args.phases:
        _PHASES_ACTIVE = PartTimes(_PHASES, time.process_time).__enter__()
    text_ids: list[int] = []
    tokenizer = None
    if args.output:
        from worker.startup import load_tokenizer

        tokenizer = load_tokenizer(str(args.tokenizer_dir))
        text = (Path(__file__).parent / "texts/declaration_of_independence.txt").read_text()
        text_ids = list(tokenizer(text)["input_ids"])
    print(f"load {open('/proc/loadavg').read().split()[0]}; {args.requests} requests x {_PROMPT} in / {_NEW} out; "
          f"µs of host CPU (medians of {args.repeats})")
    for batch in (int(b) for b in args.batch.split(",")):
        runs = [run(batch, args.requests, _OutputSide(tokenizer, text_ids) if tokenizer else None)
                for _ in range(args.repeats)]

        def med(key: str) -> float:
            return statistics.median(r[key] for r in runs)

        line = (f"batch {batch}: {runs[0]['steps']} steps, engine + runner host {med('engine_us_step'):.0f} µs/step "
                f"({med('engine_us_token'):.2f} µs/token; {med('full_us_step'):.0f} µs/step over the "
                f"{runs[0]['full_steps']} steps at the cap)")
        if tokenizer is not None:
            line += (f"; output side {med('handle_us_token'):.2f} µs/token handling + "
                     f"{med('encode_us_token'):.2f} µs/token encoding")
        print(line, flush=True)
        if args.phases:
            names = [name for name, *_ in _PHASES]
            print("  µs/step: " + ", ".join(f"{n} {med('phase ' + n):.0f}" for n in names
                                            if "phase " + n in runs[0]), flush=True)
        if args.profile:
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            run(batch, args.requests, _OutputSide(tokenizer, text_ids) if tokenizer else None)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
