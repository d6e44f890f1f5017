"""Rank 0 of a real two-rank CPU worker (gloo), beside the unsharded runner, on the same steps.

`python -m tests.worker.parallel.tp_probe [--quantize M] [--device D] OUT_DIR MODEL_DIR...`: for each model, a 13-token
prefill (every prompt row's logits) then 16 greedy decode steps through the paged cache, run by
the unsharded ModelRunner and by a sharded one whose rank 1 is a real `worker.parallel.rank`
process; both runners' logits go to OUT_DIR/<model dir name>.pt. The decode tokens are the
unsharded run's argmax, fed to both, so a step's difference never compounds into the next.
Then both runners serve three prompts through the engine with overlapped scheduling (as on CUDA:
a step's decode tokens are placeholders filled from the previous step on rank 0's device, which
the other ranks get by broadcast): their greedy tokens go to the same file. With --quantize, the
dense unsharded model's logits too.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from common.config import FleetConfig, WorkerConfig
from common.sampling_params import SamplingParams
from worker.batch import ScheduledBatch, ScheduledRequest
from worker.engine import LLMEngine
from worker.model_runner import ModelRunner
from worker.parallel.launch import start_ranks
from worker.request import Request, RequestKey

STEPS = 16


def _logits(runner: ModelRunner, tokens: list[int], start: int, n: int) -> torch.Tensor:
    blocks = list(range(runner.num_blocks))
    req = ScheduledRequest(RequestKey("probe", 0), tokens[start : start + n], start, blocks, True,
                           SamplingParams(max_new_tokens=1), all_token_ids=tokens, prefill_logprobs=n > 1)
    with torch.inference_mode():
        inputs = runner.prepare_inputs(ScheduledBatch(0, [req], 1 if n == 1 else 0, n), None)
        logits = runner.logits(inputs)
    assert logits is not None
    return logits.clone()  # (rows, V)


def _run(runner: ModelRunner, prompt: list[int], decoded: list[int] | None) -> tuple[list[torch.Tensor], list[int]]:
    tokens = list(prompt)
    out = [_logits(runner, tokens, 0, len(prompt))]
    chosen: list[int] = []
    for i in range(STEPS):
        nxt = decoded[i] if decoded is not None else int(out[-1][-1].argmax())
        chosen.append(nxt)
        tokens.append(nxt)
        out.append(_logits(runner, tokens, len(tokens) - 1, 1))
    return out, chosen


def _overlapped_greedy(runner: ModelRunner, config: WorkerConfig, prompts: list[list[int]]) -> list[list[int]]:
    runner.can_overlap = True  # on CPU the launch runs at once; the placeholder path is the same
    engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=frozenset(),
                       max_model_len=runner.max_model_len)
    assert engine.overlap
    for i, prompt in enumerate(prompts):
        engine.add_request(Request(RequestKey(f"r{i}", 0), prompt, SamplingParams(max_new_tokens=12), 0, 0.0))
    out: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            out.setdefault(o.key.req_id, []).extend(o.new_token_ids)
    return [out[f"r{i}"] for i in range(len(prompts))]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quantize", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("model_dirs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    prompt = [int(t) for t in torch.randint(1, 200, (13,), generator=torch.Generator().manual_seed(1))]
    for model_dir in args.model_dirs:
        config = WorkerConfig(fleet=FleetConfig(model_id=str(model_dir)), device=args.device, dtype="float32",
                              max_batch_total_tokens=512, block_size=8, num_shard=2, quantize=args.quantize)
        prompts = [prompt, prompt[:5], prompt[3:]]
        unsharded = ModelRunner(replace(config, num_shard=None), model_dir)
        reference, chosen = _run(unsharded, prompt, None)
        reference_greedy = _overlapped_greedy(unsharded, config, prompts)
        group = start_ranks(config, 2, torch.device(args.device))
        try:
            runner = ModelRunner(config, model_dir, shards=group)
            sharded, _ = _run(runner, prompt, chosen)
            sharded_greedy = _overlapped_greedy(runner, config, prompts)
        finally:
            group.close()
        saved = {"reference": reference, "sharded": sharded, "reference_greedy": reference_greedy,
                 "sharded_greedy": sharded_greedy}
        if args.quantize is not None:  # what either quantization loses against the dense model
            dense = replace(config, num_shard=None, quantize=None)
            saved["dense"] = _run(ModelRunner(dense, model_dir), prompt, chosen)[0]
        torch.save(saved, args.out_dir / f"{model_dir.name}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
