"""Guided decoding's host work against a simulated device: the engine with and without overlap.

The runner stands in for a GPU: a forward takes `--forward-ms` of device time and a sampling
`--sample-ms`, queued as on CUDA (a launch returns at once; `wait` blocks until the device clock
reaches the end of that step's sampling; a deferred sampling starts once it is queued and the
forward is done). Everything on the host is real: the engine's scheduling and updates, input
packing (worker/input_builder.py), each constrained row's llguidance mask filled by
worker/grammar_mask.py (on its threads) and each matcher advanced by the engine. A constrained
row takes the next token of its own random valid instance of the schema load/bench_gpu.py's
--grammar uses (so it never ends, and its rows take different paths through the grammar, as a
random model's do); a free row takes a fixed token. Each run is timed whole, as the GPU bench's
rows are: every request added at once, from the first add to the last token, with the run's
detail (load/step_timeline.py: tokens per request, TTFT, slowest steps, mask fill per step).
What the table shows is how much of a guided batch's host work the device time hides, at the
8B shape's step time on an H200 (6.5 ms at batch 64: docs/perf.md, 9,760 tok/s).

    python -m load.guided_overlap --batch 64 --steps 256 --forward-ms 6.5
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["SimulatedDevice", "main"]

_FREE_TOKEN = 7


@dataclass(slots=True)
class _Step:
    batch: Any  # ScheduledBatch
    done_at: float = 0.0  # device clock (perf_counter seconds) when its results reach the host
    token_ids: list[int] | None = None  # None until its sampling is queued


class SimulatedDevice:
    """A Runner (worker/engine.py) whose device work is a clock; its host work is the real runner's."""

    can_overlap = True
    uniform_drafts = False

    def __init__(self, block_size: int, vocab_size: int, scripts: dict[str, list[int]], forward_s: float,
                 sample_s: float) -> None:
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.scripts = scripts  # a constrained request's token at generated position i is scripts[req_id][i]
        self.forward_s = forward_s
        self.sample_s = sample_s
        self.free_at = 0.0  # when the device finishes what is queued
        self.mask_seconds = 0.0  # host seconds filling masks, as ModelRunner counts them

    def execute(self, batch: Any) -> Any:
        return self.wait(self.launch(batch, None))

    def launch(self, batch: Any, previous: _Step | None, *, defer_sample: bool = False) -> _Step:
        from worker.input_builder import pack_inputs

        pack_inputs(batch, self.block_size)  # the host's input building, as the real runner does
        self.free_at = max(time.perf_counter(), self.free_at) + self.forward_s
        step = _Step(batch)
        if not defer_sample:
            self.sample(step, frozenset())
        return step

    def sample(self, step: _Step, ended: frozenset[Any]) -> None:
        import torch

        from worker import grammar_mask

        reqs = [r for r in step.batch.requests if r.do_sample]
        started = time.perf_counter()
        grammar_mask.prepare([None if r.key in ended else r.grammar for r in reqs], self.vocab_size, torch.device("cpu"))
        self.mask_seconds += time.perf_counter() - started
        self.free_at = max(time.perf_counter(), self.free_at) + self.sample_s
        step.done_at = self.free_at
        step.token_ids = [self.scripts[r.key.req_id][r.num_generated] if r.grammar is not None else _FREE_TOKEN
                          for r in reqs]

    def wait(self, step: _Step) -> Any:
        from worker.batch import NOT_SAMPLED, StepOutput

        assert step.token_ids is not None, "waited for before its sampling was queued"
        # NOTE: the simulated device: block until its clock reaches the step's end, as an event's
        # synchronize() would.
        time.sleep(max(0.0, step.done_at - time.perf_counter()))
        tokens = iter(step.token_ids)
        reqs = step.batch.requests
        sampled = [next(tokens) if r.do_sample else NOT_SAMPLED for r in reqs]
        return StepOutput(step.batch.step, [r.key for r in reqs], sampled, [0.0] * len(reqs), [[] for _ in reqs], {})


def guided_schema_and_script(tokenizer: Any, items: int, seed: int = 0) -> tuple[str, list[int]]:
    """load/bench_gpu.py's --grammar schema (200+ array items) and the tokens of a valid instance,
    random (ids 0-999, tags a-c) from `seed`."""
    from gateway.grammar import GrammarSpec, compile_grammar
    from load.bench_gpu import guided_schema

    rng = random.Random(seed)
    rows = [{"id": rng.randrange(1000), "tag": rng.choice("abc")} for _ in range(items)]
    script = tokenizer.tokenize_str(json.dumps({"rows": rows}, separators=(", ", ": ")))
    return compile_grammar(GrammarSpec.json_schema(guided_schema())), script


def run(guided: float, overlap: bool, args: argparse.Namespace, compiler: Any, grammar: str,
        scripts: dict[str, list[int]]) -> dict[str, Any]:
    """The bench's (b) row over the simulated device: `args.batch` requests of 128 prompt tokens
    and `args.steps` new ones, all added at once; the first `guided` share of them constrained."""
    from common.config import WorkerConfig
    from common.sampling_params import SamplingParams
    from load.step_timeline import Timeline, TimedRunner
    from worker.engine import LLMEngine
    from worker.request import Request, RequestKey

    config = WorkerConfig(max_batch_size=max(256, args.batch), max_batch_prefill_tokens=8192, waiting_served_ratio=0.0,
                          prefix_caching=False)
    config = replace(config, overlap_scheduling=overlap)
    device = TimedRunner(SimulatedDevice(config.block_size, args.vocab, scripts, args.forward_ms / 1e3,
                                         args.sample_ms / 1e3))
    engine = LLMEngine(config, device, num_blocks=args.batch * (128 + args.steps + 64) // config.block_size + 64,
                       eos_token_ids=frozenset({0}), max_model_len=8192, grammars=compiler)
    num_guided = round(guided * args.batch)
    cpu = time.process_time()
    timeline = Timeline(device)
    for i in range(args.batch):
        params = SamplingParams(max_new_tokens=args.steps, ignore_eos=True, grammar=grammar if i < num_guided else None)
        engine.add_request(Request(RequestKey(f"r{i}", 0), list(range(100 + i, 228 + i)), params, i, time.time()))
    deadline = time.monotonic() + 600
    while engine.has_unfinished_requests():
        assert time.monotonic() < deadline, "the run did not end"
        outs = engine.step()
        timeline.step(engine.last_batch, outs)
    seconds, cpu_s = time.perf_counter() - timeline.started, time.process_time() - cpu
    assert not timeline.errors, timeline.errors[0]
    steps = len(timeline.steps)
    return {"tok_s": sum(timeline.tokens.values()) / seconds, "step_ms": seconds / steps * 1e3,
            "host_ms": cpu_s / steps * 1e3, "timeline": timeline}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=256, help="new tokens per request")
    parser.add_argument("--forward-ms", type=float, default=6.5, help="device time of one decode forward")
    parser.add_argument("--sample-ms", type=float, default=0.1, help="device time of one step's sampling")
    parser.add_argument("--vocab", type=int, default=128_256, help="mask width (the 8B shape's vocabulary)")
    parser.add_argument("--rows", default="free,half,all", help="comma list of free, half, all (guided share)")
    args = parser.parse_args(argv)

    from common.config import DEFAULT_MODEL_ID
    from common.model_source import resolve_model
    from worker.grammar import GrammarCompiler

    compiler = GrammarCompiler(resolve_model(DEFAULT_MODEL_ID) / "tokenizer.json", args.vocab, frozenset({2}))
    scripts = {}
    for i in range(args.batch):  # items enough for the tokens: an item is ~12 of them
        grammar, scripts[f"r{i}"] = guided_schema_and_script(compiler.tokenizer, args.steps // 4 + 4, seed=i)
    for script in scripts.values():
        matcher = compiler.matcher(grammar, [])
        assert matcher.consume_tokens(script[: args.steps]), "the instance does not follow the schema"
    print(f"batch {args.batch}, simulated device {args.forward_ms} ms forward + {args.sample_ms} ms sampling per step, "
          f"mask width {args.vocab}; {args.steps} new tokens per request, the whole run timed\n")
    print("| batch | overlap | out tok/s | % of free, overlapped | step ms | host CPU ms / step |")
    print("|---|---|---|---|---|---|")
    # Warm-up: the process's first steps (torch's first ops, the mask threads), timed in no row.
    run(1.0, True, argparse.Namespace(**{**vars(args), "steps": min(4, args.steps)}), compiler, grammar, scripts)
    base = None
    details = []
    shares = {"free": 0.0, "half": 0.5, "all": 1.0}
    for label in args.rows.split(","):
        for overlap in (True, False):
            r = run(shares[label], overlap, args, compiler, grammar, scripts)
            base = base or r["tok_s"]
            name = f"{label if label == 'free' else label + ' guided'} | {'yes' if overlap else 'one step at a time'}"
            print(f"| {name} | {r['tok_s']:,.0f} | {100 * r['tok_s'] / base:.1f}% | {r['step_ms']:.2f} | "
                  f"{r['host_ms']:.2f} |", flush=True)
            details.append(f"- {name.replace(' | ', ', ')}: {r['timeline'].summary()}")
    print("\n" + "\n".join(details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
