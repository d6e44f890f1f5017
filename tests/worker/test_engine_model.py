"""The engine on real models (CPU, float32) against transformers: the default model for batched
greedy decoding, a tiny random Llama for preemption, seeded sampling and chunked prompt logprobs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from tests.worker.test_model_runner import _tiny_llama
from worker.engine import LLMEngine
from worker.request import Request
from worker.model_runner import ModelRunner

PROMPTS = ["The capital of France is", "def fibonacci(n):", "List three fruits:", "Water boils at"]
NEW = 16


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def reference(default_model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()


def _engine(model_dir: Path, overlap: bool = False, **overrides: object) -> LLMEngine:
    settings: dict[str, object] = {"device": "cpu", "dtype": "float32", "max_batch_total_tokens": 2048,
                                   "max_batch_prefill_tokens": 48, "waiting_served_ratio": 0.0}
    config = WorkerConfig(**{**settings, **overrides})  # type: ignore[arg-type]
    runner = ModelRunner(config, model_dir)
    runner.can_overlap = overlap  # on CPU the launch runs at once; the placeholder path is the same
    return LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                     max_model_len=runner.max_model_len)


@pytest.fixture(scope="module")
def expected(tokenizer, reference) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    out = {}
    for p in PROMPTS:
        ids = tokenizer(p).input_ids
        out[p] = reference.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False,
                                    attention_mask=torch.ones(1, len(ids), dtype=torch.long))[0, len(ids):].tolist()
    return out


def _run(engine: LLMEngine, prompts: dict[str, list[int]], params: SamplingParams, seeds: dict[str, int] | None = None) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, (rid, ids) in enumerate(prompts.items()):
        engine.add_request(Request(rid, ids, params, (seeds or {}).get(rid, 0), time.time()))
        if i % 2:
            for o in engine.step():  # arrivals interleave with running decodes
                out.setdefault(o.key, []).extend(o.new_token_ids)
    while engine.has_unfinished_requests():
        for o in engine.step():
            out.setdefault(o.key, []).extend(o.new_token_ids)
    return out


@pytest.mark.parametrize("overlap", [False, True], ids=["one-step", "overlapped"])
def test_batched_greedy_equals_transformers(default_model_dir: Path, tokenizer, expected, overlap: bool) -> None:  # type: ignore[no-untyped-def]
    engine = _engine(default_model_dir, overlap=overlap)
    assert engine.overlap == overlap
    got = _run(engine, {p: tokenizer(p).input_ids for p in PROMPTS}, SamplingParams(max_new_tokens=NEW))
    assert got == expected
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, transformers.LlamaForCausalLM]:
    """A random two-layer Llama: fast enough for long, preempted and chunked runs on CPU."""
    return _tiny_llama(tmp_path_factory.mktemp("engine"))


def _tiny_prompts(n: int) -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(1)
    return {f"p{i}": torch.randint(3, 97, (int(torch.randint(4, 40, (1,), generator=g)),), generator=g).tolist()
            for i in range(n)}


@pytest.mark.parametrize("overlap", [False, True], ids=["one-step", "overlapped"])
def test_greedy_survives_preemption(tiny, overlap: bool) -> None:  # type: ignore[no-untyped-def]
    path, reference = tiny
    new = 32
    prompts = _tiny_prompts(6)
    # 10 blocks of 8 tokens: six requests growing to 36-71 tokens cannot all stay resident.
    tight = _engine(path, overlap, max_batch_total_tokens=80, block_size=8, max_batch_prefill_tokens=32)
    got = _run(tight, prompts, SamplingParams(max_new_tokens=new, ignore_eos=True))
    assert tight.scheduler.num_preemptions > 0
    assert tight.blocks.num_free_blocks == tight.blocks.num_blocks
    for rid, ids in prompts.items():
        assert got[rid] == _argmax_continuation(reference, ids, new), rid


def _argmax_continuation(model: transformers.LlamaForCausalLM, ids: list[int], new: int) -> list[int]:
    """Greedy decoding that runs through EOS (as ignore_eos does), by full forward passes."""
    out, step_ids, past = [], torch.tensor([ids]), None
    with torch.no_grad():
        for _ in range(new):
            result = model(step_ids, past_key_values=past, use_cache=True)
            past = result.past_key_values
            out.append(int(result.logits[0, -1].argmax()))
            step_ids = torch.tensor([[out[-1]]])
    return out


@pytest.mark.parametrize("overlap", [False, True], ids=["one-step", "overlapped"])
def test_seeded_sampling_is_reproducible_in_any_batch(tiny, overlap: bool) -> None:  # type: ignore[no-untyped-def]
    engine = _engine(tiny[0], overlap, max_batch_prefill_tokens=16)
    params = SamplingParams(max_new_tokens=24, do_sample=True, temperature=0.9, top_p=0.95, ignore_eos=True)
    crowd = _tiny_prompts(5)
    target = {"t": crowd.pop("p0")}
    alone = _run(engine, target, params, {"t": 42})["t"]
    together = _run(engine, {**crowd, **target}, params, {"t": 42, "p1": 1, "p2": 2, "p3": 3, "p4": 4})["t"]
    assert alone == together
    assert _run(engine, target, params, {"t": 43})["t"] != alone


def test_overlapped_steps_draw_the_same_seeded_samples(tiny) -> None:  # type: ignore[no-untyped-def]
    # The sampler's step counter must count the token still in flight: same seeds, same text.
    params = SamplingParams(max_new_tokens=20, do_sample=True, temperature=0.8, top_k=20, ignore_eos=True)
    prompts = _tiny_prompts(4)
    seeds = {rid: 100 + i for i, rid in enumerate(prompts)}
    one_step = _run(_engine(tiny[0], False, max_batch_prefill_tokens=16), prompts, params, seeds)
    overlapped = _run(_engine(tiny[0], True, max_batch_prefill_tokens=16), prompts, params, seeds)
    assert overlapped == one_step


def test_prefill_logprobs_match_transformers(tiny) -> None:  # type: ignore[no-untyped-def]
    path, reference = tiny
    ids = _tiny_prompts(1)["p0"]
    engine = _engine(path, max_batch_prefill_tokens=5)  # the prompt is split over chunks
    engine.add_request(Request("p", ids, SamplingParams(max_new_tokens=1, prefill_logprobs=True), 0, time.time()))
    outs = []
    while engine.has_unfinished_requests():
        outs.extend(engine.step())
    got = next(o.prefill_logprobs for o in outs if o.prefill_logprobs is not None)
    with torch.no_grad():
        logp = torch.log_softmax(reference(torch.tensor([ids])).logits[0].float(), -1)
    want = [float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    assert len(got) == len(want)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-3, atol=1e-3)


def test_bfloat16_on_cpu_serves_the_same_answer(default_model_dir: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer("The capital of France is").input_ids
    got = _run(_engine(default_model_dir, dtype="bfloat16"), {"q": ids}, SamplingParams(max_new_tokens=3))["q"]
    assert tokenizer.decode(got).startswith(" Paris")


def test_seeded_continuation_draws_what_the_lost_attempt_would_have(default_model_dir: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompt = tokenizer(PROMPTS[0]).input_ids
    params = SamplingParams(max_new_tokens=10, do_sample=True, temperature=0.9)
    engine = _engine(default_model_dir)
    engine.add_request(Request("full", prompt, params, 77, time.time()))
    full: list[int] = []
    while engine.has_unfinished_requests():
        for o in engine.step():
            full.extend(o.new_token_ids)
    # The attempt was lost after 4 tokens: a continuation carries them in its prompt.
    rest = SamplingParams(max_new_tokens=6, do_sample=True, temperature=0.9)
    engine.add_request(Request("cont", prompt + full[:4], rest, 77, time.time(), num_generated_offset=4))
    cont: list[int] = []
    while engine.has_unfinished_requests():
        for o in engine.step():
            cont.extend(o.new_token_ids)
    assert full[:4] + cont == full



@pytest.mark.parametrize("overlap", [False, True], ids=["one-step", "overlapped"])
def test_min_tokens_runs_past_an_eos_the_model_wants_at_once(tiny, overlap: bool) -> None:  # type: ignore[no-untyped-def]
    path, reference = tiny
    ids = _tiny_prompts(1)["p0"]
    (first,) = _argmax_continuation(reference, ids, 1)
    with torch.no_grad():
        runner_up = int(reference(torch.tensor([ids])).logits[0, -1].topk(2).indices[1])
    config = WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=512)
    runner = ModelRunner(config, path)
    runner.can_overlap = overlap
    runner.eos_token_ids = frozenset({first})  # the model's greedy first token is its EOS here
    engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                       max_model_len=runner.max_model_len)
    assert _run(engine, {"a": ids}, SamplingParams(max_new_tokens=8))["a"] == [first]
    held = _run(engine, {"b": ids}, SamplingParams(max_new_tokens=8, min_tokens=3))["b"]
    assert held[0] == runner_up and first not in held[:3] and len(held) >= 3
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
