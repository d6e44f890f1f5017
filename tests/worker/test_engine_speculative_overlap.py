"""Overlapped speculation (worker/engine.py): step N+1 is scheduled and launched before N's
verified drafts are read, on an assumption of how many N keeps. Over a fake runner whose "model"
repeats itself with breaks, so assumptions hold and fail both: the output is the plain run's,
stale rows never reach an output (the fake samples a token outside the vocabulary there), KV a
stale row overwrote is recomputed before it is read (a fake over a page store checks each key),
and no block leaks."""

from __future__ import annotations

import pytest

from common.config import WorkerConfig
from tests.fakes import solo_run
from tests.worker.test_block_manager_window import PagedFakeRunner
from tests.worker.test_engine_speculative import PROMPTS, _engine, _run, _tokens, periodic
from worker.engine import LLMEngine


def _launched_ahead(calls: list[tuple[str, int]]) -> int:
    """Steps launched before the step before them was waited for."""
    waited: set[int] = set()
    ahead = 0
    for verb, step in calls:
        if verb == "wait":
            waited.add(step)
        elif verb == "launch" and step - 1 not in waited and step > 1:
            ahead += 1
    return ahead


@pytest.mark.parametrize("speculate", [1, 2, 4])
@pytest.mark.parametrize("uniform", [False, True], ids=["eager", "graph-runner"])
def test_overlapped_speculation_gives_the_plain_output(speculate: int, uniform: bool) -> None:
    engine, runner = _engine(speculate, overlap=True, uniform=uniform)
    outs = _run(engine, PROMPTS, 30)
    for rid, prompt in PROMPTS.items():
        assert _tokens(outs[rid]) == solo_run(prompt, 30, periodic), rid
        assert outs[rid][-1].finish_reason == "length"
    stats = engine.stats()
    assert 0 < stats.accepted_draft_tokens < stats.draft_tokens
    assert runner.stale_rows > 0  # some assumptions failed
    verifying = {b.step for b in runner.batches if any(r.num_draft_tokens for r in b.requests)}
    assert _launched_ahead([c for c in runner.calls if c[1] - 1 in verifying or c[0] == "wait"]) > 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks  # no block leaked


@pytest.mark.parametrize("max_new", [1, 2, 3, 5, 9, 14])
def test_max_new_tokens_and_eos_are_exact_when_overlapped(max_new: int) -> None:
    prompt = [5, 6, 7, 8, 5, 6, 7, 8]
    engine, _ = _engine(4, overlap=True, uniform=True)
    outs = _run(engine, {"a": prompt}, max_new)
    assert _tokens(outs["a"]) == solo_run(prompt, max_new, periodic)
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    eos_prompt = [3, 4, 0, 5, 3, 4]  # the periodic model soon repeats the 0 (EOS)
    engine, _ = _engine(4, overlap=True, uniform=True)
    outs = _run(engine, {"e": eos_prompt}, 20, ignore_eos=False)
    plain = solo_run(eos_prompt, 20, periodic)
    assert _tokens(outs["e"]) == plain[: plain.index(0) + 1] and outs["e"][-1].finish_reason == "eos_token"


def test_preemption_and_chunked_prefill_when_overlapped() -> None:
    engine, runner = _engine(3, num_blocks=10, budget=8, overlap=True, uniform=True)
    prompts = {f"p{i}": [i + 2, 9, i + 4, 9, i + 2, 9, i + 4] for i in range(5)}
    outs = _run(engine, prompts, 20)
    for rid, prompt in prompts.items():
        assert _tokens(outs[rid]) == solo_run(prompt, 20, periodic), rid
    assert engine.stats().num_preemptions > 0 and engine.stats().accepted_draft_tokens > 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


@pytest.mark.parametrize("prefix", [False, True], ids=["no-prefix-cache", "prefix-cache"])
def test_kv_that_a_stale_row_overwrote_is_recomputed_before_it_is_read(prefix: bool) -> None:
    # Every key each query reads holds the request's own token at that position (a page store).
    config = WorkerConfig(block_size=4, max_batch_prefill_tokens=32, max_batch_size=8, prefix_caching=prefix,
                          waiting_served_ratio=0.0, speculate=4)
    runner = PagedFakeRunner(4, 32, can_overlap=True, model=periodic, uniform_drafts=True, window=4096)
    engine = LLMEngine(config, runner, num_blocks=64, eos_token_ids=frozenset({0}), max_model_len=4096)
    outs = _run(engine, PROMPTS, 30)
    for rid, prompt in PROMPTS.items():
        assert _tokens(outs[rid]) == solo_run(prompt, 30, periodic), rid
    assert runner.stale_rows > 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
