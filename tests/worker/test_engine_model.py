"""The engine on the real default model (CPU, float32) against transformers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from worker.engine import EngineRequest, LLMEngine
from worker.model_runner import ModelRunner

PROMPTS = ["The capital of France is", "def fibonacci(n):", "List three fruits:", "Water boils at"]
NEW = 16


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def reference(default_model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()


def _engine(model_dir: Path, **overrides: object) -> LLMEngine:
    settings: dict[str, object] = {"device": "cpu", "dtype": "float32", "max_batch_total_tokens": 2048,
                                   "max_batch_prefill_tokens": 48, "waiting_served_ratio": 0.0}
    config = WorkerConfig(**{**settings, **overrides})  # type: ignore[arg-type]
    runner = ModelRunner(config, model_dir)
    return LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                     max_model_len=runner.max_model_len)


def _run(engine: LLMEngine, prompts: dict[str, list[int]], params: SamplingParams, seeds: dict[str, int] | None = None) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, (rid, ids) in enumerate(prompts.items()):
        engine.add_request(EngineRequest(rid, ids, params, (seeds or {}).get(rid, 0), time.time()))
        if i % 2:
            for o in engine.step():  # arrivals interleave with running decodes
                out.setdefault(o.req_id, []).extend(o.new_token_ids)
    while engine.has_unfinished_requests():
        for o in engine.step():
            out.setdefault(o.req_id, []).extend(o.new_token_ids)
    return out


def test_batched_greedy_equals_transformers(default_model_dir: Path, tokenizer, reference) -> None:  # type: ignore[no-untyped-def]
    prompts = {p: tokenizer(p).input_ids for p in PROMPTS}
    got = _run(_engine(default_model_dir), prompts, SamplingParams(max_new_tokens=NEW))
    for p, ids in prompts.items():
        want = reference.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False,
                                  attention_mask=torch.ones(1, len(ids), dtype=torch.long))[0, len(ids):].tolist()
        assert got[p] == want, p


def test_greedy_survives_preemption(default_model_dir: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompts = {p: tokenizer(p).input_ids for p in PROMPTS}
    roomy = _run(_engine(default_model_dir), prompts, SamplingParams(max_new_tokens=NEW))
    tight = _engine(default_model_dir, max_batch_total_tokens=64, block_size=8)
    squeezed = _run(tight, prompts, SamplingParams(max_new_tokens=NEW))
    assert tight.scheduler.num_preemptions > 0
    assert squeezed == roomy


def test_seeded_sampling_is_reproducible_in_any_batch(default_model_dir: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_new_tokens=NEW, do_sample=True, temperature=0.9, top_p=0.95)
    target = {"t": tokenizer(PROMPTS[0]).input_ids}
    alone = _run(_engine(default_model_dir), target, params, {"t": 42})["t"]
    crowd = {**{f"o{i}": tokenizer(p).input_ids for i, p in enumerate(PROMPTS)}, **target}
    together = _run(_engine(default_model_dir), crowd, params, {"t": 42, "o0": 1, "o1": 2, "o2": 3, "o3": 4})["t"]
    assert alone == together
    other_seed = _run(_engine(default_model_dir), target, params, {"t": 43})["t"]
    assert other_seed != alone


def test_prefill_logprobs_match_transformers(default_model_dir: Path, tokenizer, reference) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer("The quick brown fox jumps over the lazy dog because it").input_ids
    engine = _engine(default_model_dir, max_batch_prefill_tokens=5)  # prompt split over chunks
    engine.add_request(EngineRequest("p", ids, SamplingParams(max_new_tokens=1, prefill_logprobs=True), 0, time.time()))
    outs = []
    while engine.has_unfinished_requests():
        outs.extend(engine.step())
    got = next(o.prefill_logprobs for o in outs if o.prefill_logprobs is not None)
    with torch.no_grad():
        logp = torch.log_softmax(reference(torch.tensor([ids])).logits[0].float(), -1)
    want = [float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    assert len(got) == len(want)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-3, atol=1e-3)
