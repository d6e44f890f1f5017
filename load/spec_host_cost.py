"""Host time per speculative step on the CPU, the model's forward left out: what a host-bound GPU
step (a small model: the device's part of a step is ~1 ms) pays around each verification.

A tiny random Llama (one layer, hidden 64, vocabulary 512: its forward and LM head are cheap and
timed apart) serves one request whose prompt repeats, so the model loops and n-gram drafts are
accepted. Each engine step is split into: the host before the forward (scheduling and drafting,
input building, sampling inputs), the forward and LM head (device work on a GPU; left out), and
the host after it (the sampling and acceptance launches, the results read back, the engine's
update). Without speculation and with `--speculate K` (scheduled and overlapped as on a GPU with
verification graphs: load/bench_speculative.py --uniform-drafts), same run, interleaved rounds,
medians of the rounds.

    python -m load.spec_host_cost --speculate 4 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

_TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
         "vocab_size": 512, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
         "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "rope_theta": 10000.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speculate", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=300)
    args = ap.parse_args(argv)
    import torch

    from common.config import WorkerConfig
    from common.sampling_params import SamplingParams
    from load.bench_speculative import _schedule_as_on_graphs
    from worker.engine import LLMEngine
    from worker.model_runner import ModelRunner
    from worker.request import Request

    torch.manual_seed(0)
    model_dir = Path(tempfile.mkdtemp(prefix="genfleet-tiny-"))
    (model_dir / "config.json").write_text(json.dumps(_TINY))
    engines, spent = {}, {}
    for k in (0, args.speculate):
        config = WorkerConfig(device="cpu", dtype="float32", speculate=k, max_batch_total_tokens=4096)
        runner = ModelRunner(config, model_dir, load=False)
        engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=frozenset(), max_model_len=4096)
        if k:
            _schedule_as_on_graphs(engine)
        clock = {"forward": 0.0, "before": 0.0, "step_start": 0.0, "forward_start": 0.0}
        forward, logits_of = runner._forward, runner._logits_of  # noqa: SLF001: timed in place

        def timed_forward(*a, _f=forward, _c=clock):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            _c["before"] += started - _c["step_start"] if not _c["forward_start"] else 0.0
            _c["forward_start"] = started
            try:
                return _f(*a)
            finally:
                _c["forward"] += time.perf_counter() - started

        def timed_logits(*a, _f=logits_of, _c=clock):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            try:
                return _f(*a)
            finally:
                _c["forward"] += time.perf_counter() - started

        runner._forward, runner._logits_of = timed_forward, timed_logits  # type: ignore[method-assign]
        engines[k], spent[k] = (engine, clock), {"total": [], "before": [], "after": [], "tokens": []}
    prompt = list(range(10, 60)) * 4
    for r in range(args.rounds + 1):  # round 0 warms up
        for k in (list(engines) if r % 2 else list(engines)[::-1]):
            engine, clock = engines[k]
            engine.add_request(Request(f"r{r}", prompt, SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True),
                                       0, time.time()))
            total = before = forward = 0.0
            steps = tokens = 0
            while engine.has_unfinished_requests():
                clock.update(forward=0.0, before=0.0, forward_start=0.0, step_start=time.perf_counter())
                outs = engine.step()
                total += time.perf_counter() - clock["step_start"]
                before, forward = before + clock["before"], forward + clock["forward"]
                steps += 1
                tokens += sum(len(o.new_token_ids) for o in outs)
            if r:
                spent[k]["total"].append((total - forward) / steps * 1e6)
                spent[k]["before"].append(before / steps * 1e6)
                spent[k]["after"].append((total - forward - before) / steps * 1e6)
                spent[k]["tokens"].append(tokens / steps)
    print("| --speculate | host µs per step | before the forward | after it | tokens per step |\n|---|---|---|---|---|")
    for k, got in spent.items():
        med = {name: statistics.median(v) for name, v in got.items()}
        print(f"| {k} | {med['total']:.0f} | {med['before']:.0f} | {med['after']:.0f} | {med['tokens']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
