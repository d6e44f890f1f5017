"""A sliding-window model whose pages behind the window go back, against transformers: a tiny random
Mistral (window 16) over a pool smaller than its sequence, prompt and decode far past the window."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from tests.worker.test_engine_model import _argmax_continuation
from tests.worker.test_models import _COMMON, _our_logits
from worker import ops
from worker.block_manager import BlockManager
from worker.engine import LLMEngine
from worker.model_runner import ModelRunner
from worker.request import Request

WINDOW = 16
BLOCK = 4


@pytest.fixture(scope="module")
def mistral(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, transformers.MistralForCausalLM]:
    torch.manual_seed(0)
    config = transformers.MistralConfig(**{**_COMMON, "sliding_window": WINDOW})
    model = transformers.MistralForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the init so differences would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("mistral_window")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(params=["torch", "triton"])
def attention_kernels(request: pytest.FixtureRequest) -> Iterator[str]:
    """The references, or the Triton attention kernels (under TRITON_INTERPRET on CPU)."""
    if request.param == "torch":
        yield "torch"
        return
    pytest.importorskip("triton")
    from genfleet_kernels.paged_decode_attention import paged_decode_attention
    from genfleet_kernels.prefill_attention import prefill_attention

    saved = dict(ops._impl)
    ops._impl.update(paged_decode_attention=paged_decode_attention, prefill_attention=prefill_attention)
    try:
        yield "triton"
    finally:
        ops._impl.update(saved)


def _prompt(n: int, seed: int) -> list[int]:
    return [int(t) for t in torch.randint(1, 200, (n,), generator=torch.Generator().manual_seed(seed))]


def _engine(path: Path, kv_tokens: int) -> LLMEngine:
    config = WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=kv_tokens, block_size=BLOCK,
                          max_batch_prefill_tokens=8, waiting_served_ratio=0.0)
    runner = ModelRunner(config, path)
    return LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=frozenset(),
                     max_model_len=runner.max_model_len, kv_window=runner.model.cfg.kv_window)


def test_the_window_is_every_layers_and_no_longer_caps_the_context(mistral) -> None:  # type: ignore[no-untyped-def]
    runner = ModelRunner(WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=64, block_size=BLOCK),
                         mistral[0])
    assert runner.max_model_len == _COMMON["max_position_embeddings"]
    assert runner.model.cfg.layer_windows == (WINDOW, WINDOW) and runner.model.cfg.kv_window == WINDOW


def test_logits_far_past_the_window_match_transformers_with_pages_given_back(mistral, attention_kernels: str) -> None:  # type: ignore[no-untyped-def]
    # 10 blocks of 4 (40 KV tokens) for a 30-token prompt prefilled in chunks of 10, then decode
    # steps to 3x the pool. Each step gives back the pages behind the window and poisons every
    # free page with NaN (a read of one would show); a newly allocated page starts as finite
    # garbage, as a reused one does (the CPU path reads, masked, a last page's unwritten slots).
    path, reference = mistral
    runner = ModelRunner(WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=40, block_size=BLOCK), path)
    blocks = BlockManager(runner.num_blocks, BLOCK, enable_prefix_caching=False, window=runner.model.cfg.kv_window)
    prompt = _prompt(30, seed=5)
    req = Request("x", list(prompt), SamplingParams(max_new_tokens=1), seed=0, arrival_time=0.0)
    steps = 90
    ours: list[torch.Tensor] = []
    while req.num_tokens < len(prompt) + steps:
        start = req.num_computed_tokens
        chunk = req.all_token_ids[start : start + 10]
        blocks.release_behind_window(req)
        held = len(req.block_table)
        blocks.allocate(req, len(chunk))
        fresh = req.block_table[held:]
        free = [b for b in range(runner.num_blocks) if blocks.ref_counts[b] == 0]
        for layer in runner.kv.layers:
            layer.k[fresh], layer.v[fresh] = 1e3, 1e3
            layer.k[free], layer.v[free] = float("nan"), float("nan")
        logits = _our_logits(runner, chunk, start, req.block_table)
        ours.append(logits)
        req.num_computed_tokens += len(chunk)
        if req.num_computed_tokens == req.num_tokens:
            req.all_token_ids.append(int(logits[-1].argmax()))
    assert len(req.block_table) > 2 * runner.num_blocks and req.num_released_blocks > runner.num_blocks
    with torch.no_grad():
        theirs = reference(torch.tensor([req.all_token_ids[:-1]])).logits[0].float()
    torch.testing.assert_close(torch.cat(ours), theirs, rtol=1e-4, atol=1e-4)


def test_engine_greedy_over_a_pool_smaller_than_the_sequence_equals_transformers(mistral) -> None:  # type: ignore[no-untyped-def]
    # Requests of 20 + 60 tokens, one after another, through the engine over 48 KV tokens (prefix
    # caching on: a prompt served twice meets whatever of its blocks are still cached).
    path, reference = mistral
    engine = _engine(path, 48)
    prompts = {"a": _prompt(20, seed=6), "b": _prompt(20, seed=6), "c": _prompt(21, seed=7)}
    out: dict[str, list[int]] = {}
    for rid, prompt in prompts.items():
        engine.add_request(Request(rid, prompt, SamplingParams(max_new_tokens=60), 0, time.time()))
        for _ in range(200):
            if not engine.has_unfinished_requests():
                break
            for o in engine.step():
                out.setdefault(o.key, []).extend(o.new_token_ids)
    assert not engine.has_unfinished_requests() and engine.blocks.num_free_blocks == engine.blocks.num_blocks
    for rid, prompt in prompts.items():
        with torch.no_grad():
            want = reference.generate(torch.tensor([prompt]), max_new_tokens=60, do_sample=False,
                                      attention_mask=torch.ones(1, len(prompt), dtype=torch.long))[0, len(prompt):]
        assert out[rid] == want.tolist(), rid


def test_a_shared_prefix_whose_first_blocks_were_evicted_hits_inside_the_window(mistral) -> None:  # type: ignore[no-untyped-def]
    # A 40-token prefix crossing the window twice, served to "a", then a filler that evicts the
    # prefix's first blocks (given back behind the window, so first in line): "b" shares the
    # prefix, finds its first blocks gone, and still hits the blocks its next query reads.
    path, reference = mistral
    engine = _engine(path, 64)
    prefix = _prompt(40, seed=8)
    prompts = {"a": prefix + [5, 6, 7, 8], "filler": _prompt(24, seed=9), "b": prefix + [9, 10, 11]}
    out: dict[str, list[int]] = {}
    for rid, prompt in prompts.items():
        if rid == "b":
            assert (0, *prefix[:BLOCK]) not in engine.blocks._cached, "the prefix's first block was not evicted"
        engine.add_request(Request(rid, prompt, SamplingParams(max_new_tokens=8), 0, time.time()))
        admitted = list(engine.scheduler.waiting)
        for _ in range(200):
            if not engine.has_unfinished_requests():
                break
            for o in engine.step():
                out.setdefault(o.key, []).extend(o.new_token_ids)
    assert admitted[0].num_cached_tokens == 40  # "b": the window of position 40 was cached
    assert not engine.has_unfinished_requests() and engine.blocks.num_free_blocks == engine.blocks.num_blocks
    for rid, prompt in prompts.items():
        assert out[rid] == _argmax_continuation(reference, prompt, 8), rid  # the engine ignores EOS here
