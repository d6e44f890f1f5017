"""What the watermark costs in text quality and how well it is detected, on the real model (CPU).

The same prompts are answered twice with seeded sampling, with and without `watermark`, in one
batch on the in-process engine. Each answer's perplexity is measured by the same model without the
bias (the paper's oracle-perplexity comparison, with the generator as its own oracle: the engine's
prompt logprobs over prompt + answer), and each is
scored by the detector on its decoded text, re-tokenized as the gateway would; then once more with
every fourth word replaced (a paraphrase attack).

    python -m load.watermark_quality --requests 20 --max-new-tokens 200
    python -m load.watermark_quality --delta 1.0 --gamma 0.25
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from common import watermark
from common.config import DEFAULT_MODEL_ID, FleetConfig, WorkerConfig
from common.model_source import resolve_model
from common.sampling_params import SamplingParams
from gateway.tokenizer import Tokenizer
from worker.engine import LLMEngine
from worker.model_runner import ModelRunner
from worker.request import Request, RequestKey

__all__ = ["TOPICS", "chat_prompts", "replace_every_fourth_word", "main"]

TOPICS = ("the ocean", "volcanoes", "the history of bread", "how bees live", "the moon", "trains", "chess",
          "rainforests", "the human heart", "coffee", "deserts", "music theory", "electric cars", "ancient Rome",
          "photosynthesis", "the internet", "glaciers", "owls", "the printing press", "gardening")
_FILLERS = ("apple", "river", "stone", "quiet", "blue", "engine", "paper", "window")


def chat_prompts(tokenizer: Tokenizer, n: int) -> list[list[int]]:
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Write an essay about {TOPICS[i % len(TOPICS)]}."}])
             for i in range(n)]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def replace_every_fourth_word(text: str, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = text.split(" ")
    return " ".join(rng.choice(_FILLERS) if i % 4 == 3 else w for i, w in enumerate(words))


@dataclass
class Answer:
    ids: list[int]
    perplexity: float
    z: float
    z_edited: float


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=FleetConfig.watermark_gamma)
    parser.add_argument("--delta", type=float, default=FleetConfig.watermark_delta)
    args = parser.parse_args(argv)
    model_dir = resolve_model(DEFAULT_MODEL_ID)
    tokenizer = Tokenizer(model_dir)
    fleet = FleetConfig(watermark_gamma=args.gamma, watermark_delta=args.delta)
    config = WorkerConfig(fleet=fleet, device="cpu", dtype="float32", max_batch_total_tokens=32768)
    runner = ModelRunner(config, model_dir)
    engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                       max_model_len=runner.max_model_len)
    prompts = chat_prompts(tokenizer, args.requests)
    started = time.perf_counter()
    jobs = {}
    for marked in (False, True):
        params = SamplingParams(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=args.temperature,
                                ignore_eos=True, watermark=marked)
        jobs.update({(marked, i): Request(RequestKey(f"{marked}-{i}", 0), ids, params, 1000 + i, time.time())
                     for i, ids in enumerate(prompts)})
    outputs = _run(engine, jobs)
    seconds = time.perf_counter() - started
    # The oracle: the same engine without the bias, scoring prompt + answer (prompt logprobs).
    score = SamplingParams(max_new_tokens=1, prefill_logprobs=True)
    logprobs = _run(engine, {key: Request(RequestKey(f"ppl-{key}", 0), prompts[key[1]] + ids, score, 0, time.time())
                             for key, ids in outputs.items()}, prompt_logprobs=True)
    results: dict[bool, list[Answer]] = {False: [], True: []}
    for (marked, i), ids in sorted(outputs.items()):
        nll = -statistics.fmean(logprobs[marked, i][-len(ids):])
        text = tokenizer.decode(ids)
        z = watermark.score(tokenizer.encode(text, add_special_tokens=False), args.gamma, 4.0).z_score
        edited = tokenizer.encode(replace_every_fourth_word(text, i), add_special_tokens=False)
        results[marked].append(Answer(ids, math.exp(nll), z, watermark.score(edited, args.gamma, 4.0).z_score))
    total = sum(len(v) for v in outputs.values())
    print(f"{2 * args.requests} answers x {args.max_new_tokens} tokens in {seconds:.1f}s ({total / seconds:.1f} tok/s) "
          f"on CPU, gamma {args.gamma}, delta {args.delta}, temperature {args.temperature}")
    _report(results)
    return 0


def _run(engine: LLMEngine, jobs: dict[tuple[bool, int], Request], prompt_logprobs: bool = False
         ) -> dict[tuple[bool, int], list[Any]]:
    """Runs every job in one batch; each job's new tokens (or, with prompt_logprobs, its prompt logprobs)."""
    key_of = {job.key: key for key, job in jobs.items()}
    for job in jobs.values():
        engine.add_request(job)
    out: dict[tuple[bool, int], list[Any]] = {key: [] for key in jobs}
    while engine.has_unfinished_requests():
        for o in engine.step():
            if not prompt_logprobs:
                out[key_of[o.key]].extend(o.new_token_ids)
            elif o.prefill_logprobs is not None:
                out[key_of[o.key]].extend(o.prefill_logprobs)
    return out


def _report(results: dict[bool, list[Answer]]) -> None:
    print("| answers | perplexity (median, mean) | z (min / median / max) | z > 4 | z, every 4th word replaced (min / median) |")
    print("|---|---|---|---|---|")
    for marked in (False, True):
        rows = results[marked]
        ppl = [a.perplexity for a in rows]
        zs = sorted(a.z for a in rows)
        ze = sorted(a.z_edited for a in rows)
        print(f"| {'watermarked' if marked else 'plain'} | {statistics.median(ppl):.2f}, {statistics.mean(ppl):.2f} | "
              f"{zs[0]:.1f} / {statistics.median(zs):.1f} / {zs[-1]:.1f} | {sum(z > 4 for z in zs)}/{len(zs)} | "
              f"{ze[0]:.1f} / {statistics.median(ze):.1f} |")


if __name__ == "__main__":
    sys.exit(main())
