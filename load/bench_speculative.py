"""Speculative decoding on the CPU: n-gram `--speculate N` against no speculation, same run.

An input-grounded workload (prompts that ask to repeat, edit or continue a given text or code
block: where an answer quotes its prompt), one request at a time, greedy, the real default model
in-process (no HTTP, no Redis). Each prompt runs with speculation off and on, in alternating
order, so a machine whose load drifts weighs on both alike; both must give the same tokens.

    python -m load.bench_speculative --speculate 4 --max-new-tokens 96 --rounds 2
    python -m load.bench_speculative --speculate 4 --speculator medusa   # random heads instead of n-gram
    python -m load.bench_speculative --speculate 4 --device cuda          # on a GPU (float32 unless --dtype)
    python -m load.bench_speculative --speculate 4 --uniform-drafts       # CPU, scheduled as on a GPU's graphs
    python -m load.bench_speculative --speculate 4 --device cuda --serial-speculation  # its steps not overlapped

With --speculator (medusa, mlp_speculator or eagle3), random heads of the model's shape draft instead of
n-gram lookup. Untrained heads are almost never right, so that row measures what the heads and
verification cost (overhead), not what trained heads gain.

`verify_step_ratio` is the GPU row load/bench_gpu.py --speculate adds: the time of one batch-1
step that verifies k drafts over that of a plain decode step, same context (target <= 1.15x),
each through the runner's own path (its verification CUDA graph on a GPU). The last line says how
each engine's steps ran: replayed decode or verification graphs, or eagerly. `tokens per step` is
the speculating engine's output tokens over its steps (the prompt's step included): greedy is
exact, so it is the same on any device for the same scheduling, and `--uniform-drafts` schedules a
CPU run as a runner with verification CUDA graphs does (worker/scheduler.py: filler drafts, drafts
past max_new_tokens, no per-request pause) and overlapped as on CUDA (worker/engine.py: a step
scheduled on an assumption that fails costs a stale step), giving on the CPU the steps, drafts and
acceptance of the GPU run; `stale rows` counts those steps' wasted rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common.config import DEFAULT_MODEL_ID, WorkerConfig
from common.model_source import resolve_model
from common.sampling_params import SamplingParams
from worker.engine import LLMEngine
from worker.model_runner import ModelRunner
from worker.request import Request

_CODE = '''def merge_sorted(a, b):
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    out.extend(a[i:])
    out.extend(b[j:])
    return out
'''
_TEXT = ("The committee met on Tuesday to review the budget for the coming year. After a long "
         "discussion, the members agreed to increase funding for the library and the public parks, "
         "and to postpone the decision on the new community centre until the spring meeting.")
ASKS = [
    f"Repeat the following code exactly, with no comment:\n\n{_CODE}",
    f"Rename the function merge_sorted to merge_lists in this code and show the whole result:\n\n{_CODE}",
    f"Copy this paragraph word for word:\n\n{_TEXT}",
    f"Rewrite this paragraph, replacing 'committee' with 'board':\n\n{_TEXT}",
    f"Add type hints to this function and show the full code:\n\n{_CODE}",
    f"Quote the text below, then say in one sentence what it is about.\n\n{_TEXT}",
]


def _engine(model_dir: Path, speculate: int, heads: Path | None = None, device: str = "cpu",
            dtype: str = "float32") -> LLMEngine:
    config = WorkerConfig(device=device, dtype=dtype, speculate=speculate, max_batch_total_tokens=4096,
                          speculative_model=str(heads) if heads is not None else None)
    runner = ModelRunner(config, model_dir)
    return LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                     max_model_len=runner.max_model_len, speculator=runner.speculator)


def _schedule_as_on_graphs(engine: LLMEngine) -> None:
    # What ModelRunner sets up where it captured verification graphs (worker/scheduler.py), and
    # overlapped steps as on CUDA (on the CPU each launch runs at once: the same steps, serially).
    engine.scheduler.uniform_drafts = True
    engine.scheduler.drafter.pauses = False
    engine.overlap = True


def _one(engine: LLMEngine, rid: str, prompt: list[int], max_new: int) -> tuple[list[int], float, int]:
    """(the tokens, seconds, steps) of one request run alone."""
    engine.add_request(Request(rid, prompt, SamplingParams(max_new_tokens=max_new), 0, time.time()))
    tokens: list[int] = []
    steps = 0  # the batches run (an overlapped engine may schedule an empty one while one runs)
    started = time.perf_counter()
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens.extend(out.new_token_ids)
        steps += engine.last_batch is not None and bool(engine.last_batch.requests)
    return tokens, time.perf_counter() - started, steps


def verify_step_ratio(runner: Any, k: int, context: int = 512, iters: int = 20) -> tuple[float, float, str]:
    """(plain decode step ms, verification step ms, how the verification ran) at batch 1 on
    `runner`'s device: each step through `runner.execute`, so through whatever the engine's steps
    take (a CUDA graph where the runner captured one of that shape, else eager)."""
    from worker.batch import ScheduledBatch, ScheduledRequest
    from worker.request import RequestKey

    blocks = list(range(-(-(context + k + 1) // runner.block_size)))

    def step(drafts: int) -> float:
        req = ScheduledRequest(RequestKey("verify", 0), [7] * (1 + drafts), context, blocks, True,
                               SamplingParams(max_new_tokens=drafts + 1), num_draft_tokens=drafts)
        batch = ScheduledBatch(0, [req], 1, 1 + drafts)
        runner.execute(batch)  # warm-up
        started = time.perf_counter()
        for _ in range(iters):
            runner.execute(batch)  # waits for its results: one host sync per step
        return (time.perf_counter() - started) / iters * 1e3

    plain = step(0)
    graphs = runner.graphs
    before = graphs.replays.get(k + 1, 0) if graphs is not None else 0
    verify = step(k)
    replayed = graphs is not None and graphs.replays.get(k + 1, 0) - before == iters + 1
    return plain, verify, "CUDA graph" if replayed else "eager"


def graph_steps(engine: LLMEngine) -> str:
    """How the engine's forwards ran: replayed decode and verification graphs, the rest (prompts,
    steps of no graph's shape) eager. (The scheduler's step count is no measure of them: an
    overlapped engine also schedules empty steps, which never reach the runner.)"""
    runner = engine.runner
    assert isinstance(runner, ModelRunner)
    graphs = runner.graphs
    if graphs is None:
        return f"{engine.stats().steps} scheduled steps, all eager (no CUDA graphs)"
    decode, verify = graphs.replays.get(1, 0), sum(n for q, n in graphs.replays.items() if q > 1)
    return (f"{decode + verify + runner.eager_forwards} forwards: {decode} replayed decode graphs, {verify} "
            f"verification graphs, {runner.eager_forwards} eager")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-id", default=DEFAULT_MODEL_ID)
    ap.add_argument("--speculate", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2, help="passes over the prompts (each pass both ways)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on cuda: CUDA graphs, overlapped scheduling)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--speculator", choices=("medusa", "mlp_speculator", "eagle3"), default=None,
                    help="random heads of this kind draft instead of n-gram (measures their overhead)")
    ap.add_argument("--uniform-drafts", action="store_true",
                    help="schedule as a runner with verification CUDA graphs does (the CPU's view of a GPU run)")
    ap.add_argument("--serial-speculation", action="store_true",
                    help="the speculating engine runs its steps one at a time (no overlap), to compare on one card")
    args = ap.parse_args(argv)
    import json
    import tempfile

    from transformers import AutoTokenizer

    from load.speculator_heads import write_random_heads

    model_dir = resolve_model(args.model_id)
    heads = None
    if args.speculator:
        shape = json.loads((model_dir / "config.json").read_text())
        heads = write_random_heads(Path(tempfile.mkdtemp(prefix="genfleet-heads-")), args.speculator,
                                   shape["hidden_size"], shape["vocab_size"], args.speculate)
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok.apply_chat_template([{"role": "user", "content": a}], add_generation_prompt=True, tokenize=True,
                                       return_dict=False) for a in ASKS]
    engines = {0: _engine(model_dir, 0, device=args.device, dtype=args.dtype),
               args.speculate: _engine(model_dir, args.speculate, heads, args.device, args.dtype)}
    if args.uniform_drafts:
        _schedule_as_on_graphs(engines[args.speculate])
    if args.serial_speculation:  # what main did before speculative steps overlapped
        engines[args.speculate].overlap = False
    _one(engines[0], "warm-0", prompts[0], 4)  # first-call costs out of the figures
    _one(engines[args.speculate], "warm-1", prompts[0], 4)
    seconds = {k: 0.0 for k in engines}
    tokens = {k: 0 for k in engines}
    steps = {k: 0 for k in engines}
    ratios = []
    changed = 0
    for r in range(args.rounds):
        for i, prompt in enumerate(prompts):
            order = list(engines) if (r + i) % 2 == 0 else list(engines)[::-1]
            got = {}
            for k in order:
                got[k] = _one(engines[k], f"r{r}p{i}k{k}", prompt, args.max_new_tokens)
                seconds[k] += got[k][1]
                tokens[k] += len(got[k][0])
                steps[k] += got[k][2]
            if got[0][0] != got[args.speculate][0]:  # reported, and the exit status says so, after the figures
                changed += 1
                first = next((j for j, (a, b) in enumerate(zip(got[0][0], got[args.speculate][0])) if a != b),
                             min(len(got[0][0]), len(got[args.speculate][0])))
                print(f"round {r} prompt {i}: speculation changed the greedy output at token {first}", file=sys.stderr)
            ratios.append((len(got[args.speculate][0]) / got[args.speculate][1]) / (len(got[0][0]) / got[0][1]))
    stats = engines[args.speculate].stats()
    off, on = tokens[0] / seconds[0], tokens[args.speculate] / seconds[args.speculate]
    print(f"| speculation | output tok/s | requests | tokens | steps | tokens per step |\n|---|---|---|---|---|---|")
    print(f"| off | {off:.1f} | {len(ratios)} | {tokens[0]} | {steps[0]} | {tokens[0] / steps[0]:.2f} |")
    method = f"random {args.speculator} heads" if args.speculator else "n-gram"
    method += ", scheduled as on verification graphs" if args.uniform_drafts else ""
    k = args.speculate
    print(f"| {method}, --speculate {k} | {on:.1f} | {len(ratios)} | {tokens[k]} | {steps[k]} | {tokens[k] / steps[k]:.2f} |")
    print(f"\nratio {on / off:.2f}x (median per request {statistics.median(ratios):.2f}x); "
          f"{stats.accepted_draft_tokens} of {stats.draft_tokens} draft tokens accepted "
          f"({stats.accepted_draft_tokens / max(1, stats.draft_tokens):.0%}), per position "
          + ", ".join(f"{a / max(1, d):.0%}" for a, d in zip(stats.accepted_by_position, stats.drafted_by_position)))
    print(f"greedy outputs changed by speculation: {changed} of {len(ratios)}; "
          f"with speculation {engines[k].num_launched_ahead} steps launched before the step before them was read, "
          f"{engines[k].num_stale_rows} rows of them stale (scheduled on a failed assumption)")
    print(f"without speculation: {graph_steps(engines[0])}; with: {graph_steps(engines[args.speculate])}")
    if args.device == "cuda" and not args.speculator:
        plain, verify, how = verify_step_ratio(engines[k].runner, k)
        print(f"batch-1 step, context 512: plain decode {plain:.3f} ms, verifying {k} drafts {verify:.3f} ms "
              f"({verify / plain:.2f}x, {how}), each waited for")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
