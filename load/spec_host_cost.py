"""Host time per speculative step on the CPU, the model's forward left out: what a host-bound GPU
step (a small model: the device's part of a step is ~1 ms) pays around each verification.

A tiny random Llama (one layer, hidden 64, vocabulary 512: its forward and LM head are cheap and
timed apart) serves one request whose prompt repeats, so the model loops and n-gram drafts are
accepted. Each engine step is split into: the host before the forward (scheduling and drafting,
input building, sampling inputs), the forward and LM head (device work on a GPU; left out), and
the host after it (the sampling and acceptance launches, the results read back, the engine's
update). Without speculation and with `--speculate K`, both overlapped as on a GPU (the speculating
one also scheduled as with verification graphs: load/bench_speculative.py --uniform-drafts), same
run, interleaved rounds, medians of the rounds. Times are the thread's CPU time (time.thread_time:
on the CPU every launch runs at once, so the host never waits), which a shared machine's other
jobs disturb far less than the wall clock. A last, untimed round counts the aten ops each step
runs outside the forward (a TorchDispatchMode): on a GPU, each is a launch the host pays for.

Two paths, each its own pair of rows: `eager`, the CPU's (the sampler and the acceptance run
eagerly on the logits), and `graph head`, a GPU's with graphs that run the head: the decode and
verification graphs' replay stood in for by load/eager_graphs.py (the forward, then the head's
argmax, acceptance and packed results, all timed as the forward), so the host runs what it runs
around a replay on the card.

    python -m load.spec_host_cost --speculate 4 --rounds 5
    python -m load.spec_host_cost --speculate 4 --rounds 5 --parts   # then where the graph-head step's host time goes
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from load.part_times import PartTimes

_TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
         "vocab_size": 512, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
         "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "rope_theta": 10000.0}


class _Clock:
    """One engine's step clock: the forward's seconds, the host's before its first forward."""

    def __init__(self) -> None:
        self.forward = self.before = self.step_start = self.forward_start = 0.0
        self.in_forward = False

    def start_step(self) -> None:
        self.forward = self.before = self.forward_start = 0.0
        self.step_start = time.thread_time()

    def timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` timed as device work (the forward, the head)."""

        def run(*args: Any) -> Any:
            started = time.thread_time()
            if not self.forward_start:
                self.before += started - self.step_start
                self.forward_start = started
            self.in_forward = True
            try:
                return fn(*args)
            finally:
                self.forward += time.thread_time() - started
                self.in_forward = False

        return run


class _OpCount(TorchDispatchMode):
    """Counts the aten ops run while `clock` says no forward is running."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock, self.count = clock, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += not self.clock.in_forward
        return func(*args, **(kwargs or {}))


# Parts of a step timed apart by --parts (load/part_times.py), in thread CPU time.
_PARTS = (
    ("scheduling", "worker.scheduler", "Scheduler.schedule"),
    ("of which drafting", "worker.scheduler", "Scheduler._drafts"),
    ("of which fillers", "worker.scheduler", "Scheduler._even_out"),
    ("input building", "worker.model_runner", "ModelRunner.prepare_inputs"),
    ("sampling rows", "worker.speculative.verify", "sampling_rows"),
    ("sampling inputs", "worker.sampler", "prepare"),
    ("results read", "worker.model_runner", "read_results"),
    ("engine update", "worker.engine", "LLMEngine._update"),
    ("engine advance", "worker.engine", "LLMEngine._advance"),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speculate", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=300)
    ap.add_argument("--parts", action="store_true", help="then one more round of the graph-head path with the "
                    "parts of a step timed apart (thread CPU µs per step, the wrappers' own cost included)")
    args = ap.parse_args(argv)

    from common.config import WorkerConfig
    from common.sampling_params import SamplingParams
    from load.bench_speculative import _schedule_as_on_graphs
    from load.eager_graphs import EagerGraphs
    from worker.engine import LLMEngine
    from worker.model_runner import ModelRunner
    from worker.request import Request

    torch.manual_seed(0)
    model_dir = Path(tempfile.mkdtemp(prefix="genfleet-tiny-"))
    (model_dir / "config.json").write_text(json.dumps(_TINY))
    engines: dict[tuple[str, int], tuple[LLMEngine, _Clock]] = {}
    for path in ("eager", "graph head"):
        for k in (0, args.speculate):
            config = WorkerConfig(device="cpu", dtype="float32", speculate=k, max_batch_total_tokens=4096)
            runner = ModelRunner(config, model_dir, load=False)
            engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=frozenset(),
                               max_model_len=4096)
            if k:
                _schedule_as_on_graphs(engine)
            engine.overlap = True  # as on CUDA (on the CPU each launch runs at once: the same steps, serially)
            clock = _Clock()
            runner._eager = clock.timed(runner._eager)  # type: ignore[method-assign]  # noqa: SLF001: timed in place
            runner._logits_of = clock.timed(runner._logits_of)  # type: ignore[method-assign]  # noqa: SLF001
            if path == "graph head":
                graphs = EagerGraphs(runner, query_len=1 + k)
                graphs.try_replay = clock.timed(graphs.try_replay)  # type: ignore[method-assign]
                runner.graphs = graphs  # type: ignore[assignment]
            engines[path, k] = engine, clock
    prompt = list(range(10, 60)) * 4
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)

    def run(key: tuple[str, int], rid: str) -> tuple[float, float, int, int]:
        """(host seconds, of which before the forward, steps, tokens) of one request."""
        engine, clock = engines[key]
        engine.add_request(Request(rid, prompt, params, 0, time.time()))
        host = before = 0.0
        steps = tokens = 0
        while engine.has_unfinished_requests():
            clock.start_step()
            outs = engine.step()
            host += time.thread_time() - clock.step_start - clock.forward
            before += clock.before
            steps += 1
            tokens += sum(len(o.new_token_ids) for o in outs)
        return host, before, steps, tokens

    spent: dict[tuple[str, int], dict[str, list[float]]] = {
        key: {"total": [], "before": [], "after": [], "tokens": []} for key in engines}
    for r in range(args.rounds + 1):  # round 0 warms up
        for key in (list(engines) if r % 2 else list(engines)[::-1]):
            host, before, steps, tokens = run(key, f"r{r}")
            if r:
                spent[key]["total"].append(host / steps * 1e6)
                spent[key]["before"].append(before / steps * 1e6)
                spent[key]["after"].append((host - before) / steps * 1e6)
                spent[key]["tokens"].append(tokens / steps)
    ops = {}
    for key, (_, clock) in engines.items():
        with _OpCount(clock) as counter:
            steps = run(key, "ops")[2]
        ops[key] = counter.count / steps
    print("| path | --speculate | host µs per step | before the forward | after it | tokens per step | "
          "aten ops per step |\n|---|---|---|---|---|---|---|")
    for (path, k), got in spent.items():
        med = {name: statistics.median(v) for name, v in got.items()}
        print(f"| {path} | {k} | {med['total']:.0f} | {med['before']:.0f} | {med['after']:.0f} | "
              f"{med['tokens']:.2f} | {ops[path, k]:.1f} |")
    for path in ("eager", "graph head"):
        base, spec = (statistics.median(spent[path, k]["total"]) for k in (0, args.speculate))
        print(f"{path}: a speculating step's host time {spec / base:.2f}x a plain step's")
    if args.parts:
        parts = {}
        for k in (0, args.speculate):
            with PartTimes(_PARTS) as timer:
                steps = run(("graph head", k), "parts")[2]
            parts[k] = {label: seconds / steps * 1e6 for label, seconds in timer.seconds.items()}
        print(f"\n| part (graph head) | --speculate 0 | --speculate {args.speculate} |\n|---|---|---|")
        for label, *_ in _PARTS:
            print(f"| {label} | {parts[0][label]:.1f} | {parts[args.speculate][label]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
