"""The engine with --speculate over a fake runner whose "model" repeats itself (so n-gram drafts
are accepted) with deliberate breaks (so some are rejected): the output is exactly the plain
run's, budgets and finish rules hold per token, and rejected drafts leave no trace."""

from __future__ import annotations

import time

import pytest

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from tests.fakes import VOCAB, FakeRunner, solo_run
from worker.batch import RequestOutput
from worker.engine import LLMEngine
from worker.request import Request


def periodic(history: list[int]) -> int:
    """Repeats the token four back, except at every seventh position: drafts mostly right."""
    if len(history) % 7 == 0:
        return 1 + (history[-1] * 31 + len(history)) % (VOCAB - 1)
    return history[-4] if len(history) >= 4 else 1 + len(history)


def _engine(speculate: int, *, num_blocks: int = 64, block_size: int = 4, budget: int = 32, max_batch: int = 8,
            overlap: bool = False, max_spec_batch: int = 32, eos: int = 0,
            uniform: bool = False) -> tuple[LLMEngine, FakeRunner]:
    config = WorkerConfig(block_size=block_size, max_batch_prefill_tokens=budget, max_batch_size=max_batch,
                          waiting_served_ratio=0.0, speculate=speculate, speculate_max_batch_size=max_spec_batch)
    runner = FakeRunner(block_size, budget, can_overlap=overlap, model=periodic, uniform_drafts=uniform)
    engine = LLMEngine(config, runner, num_blocks=num_blocks, eos_token_ids=frozenset({eos}), max_model_len=4096)
    return engine, runner


def _run(engine: LLMEngine, prompts: dict[str, list[int]], max_new: int | dict[str, int],
         ignore_eos: bool = True) -> dict[str, list[RequestOutput]]:
    for rid, prompt in prompts.items():
        n = max_new[rid] if isinstance(max_new, dict) else max_new
        engine.add_request(Request(rid, prompt, SamplingParams(max_new_tokens=n, ignore_eos=ignore_eos), 0, time.time()))
    outs: dict[str, list[RequestOutput]] = {}
    for _ in range(2000):
        if not engine.has_unfinished_requests():
            return outs
        for o in engine.step():
            outs.setdefault(o.key, []).append(o)
    raise AssertionError("engine made no progress")


def _tokens(outs: list[RequestOutput]) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


PROMPTS = {f"r{i}": [i + 2, i + 3, 9, i + 5, i + 2, i + 3] + [7] * i for i in range(6)}


@pytest.mark.parametrize("speculate", [1, 2, 4])
@pytest.mark.parametrize("overlap", [False, True], ids=["one-step", "overlap-capable"])
def test_output_is_the_plain_runs_with_fewer_steps(speculate: int, overlap: bool) -> None:
    engine, runner = _engine(speculate, overlap=overlap)
    outs = _run(engine, PROMPTS, 30)
    for rid, prompt in PROMPTS.items():
        assert _tokens(outs[rid]) == solo_run(prompt, 30, periodic), rid
        assert outs[rid][-1].finish_reason == "length"
    stats = engine.stats()
    assert 0 < stats.accepted_draft_tokens < stats.draft_tokens  # accepted and rejected drafts both
    assert sum(stats.accepted_by_position) == stats.accepted_draft_tokens
    assert sum(stats.drafted_by_position) == stats.draft_tokens
    assert len(stats.drafted_by_position) == speculate
    assert stats.steps < 30 + 6  # a plain run needs a step per token after the prompt's
    assert any(len(o.new_token_ids) > 1 for o in outs["r0"])  # bursts
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks  # no block leaked
    assert all(sum(len(r.token_ids) for r in b.requests) <= 32 for b in runner.batches)


@pytest.mark.parametrize("max_new", range(1, 10))
@pytest.mark.parametrize("uniform", [False, True], ids=["eager", "graph-runner"])
def test_max_new_tokens_is_exact(max_new: int, uniform: bool) -> None:
    engine, runner = _engine(4, uniform=uniform)
    outs = _run(engine, {"a": [5, 6, 7, 8, 5, 6, 7, 8]}, max_new)
    assert _tokens(outs["a"]) == solo_run([5, 6, 7, 8, 5, 6, 7, 8], max_new, periodic)
    assert outs["a"][-1].finish_reason == "length"
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    verifying = [r for batch in runner.batches for r in batch.requests if r.num_draft_tokens]
    assert verifying or max_new <= (1 if uniform else 2)  # the last token left: nothing to draft past it
    if uniform:
        # Every verifying step verifies all 4 drafts (one graph's shape), past max_new_tokens
        # too: the tokens after the limit are dropped, and their blocks come back.
        assert {r.num_draft_tokens for r in verifying} <= {4}
    else:
        # No step drafts past the limit: a verified run ends on the model's own last token.
        assert all(r.start_pos + 1 - 8 + r.num_draft_tokens <= max_new for r in verifying)


def test_an_eos_inside_an_accepted_run_ends_the_request_there() -> None:
    prompt = [3, 4, 0, 5, 3, 4]  # the periodic model soon repeats the 0 (EOS)
    engine, _ = _engine(4)
    outs = _run(engine, {"e": prompt}, 20, ignore_eos=False)
    plain = solo_run(prompt, 20, periodic)
    want = plain[: plain.index(0) + 1]
    assert _tokens(outs["e"]) == want and outs["e"][-1].finish_reason == "eos_token"
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_prefix_cache_entries_hold_only_kept_tokens() -> None:
    engine, _ = _engine(4, block_size=2)
    outs = _run(engine, PROMPTS, 25)
    sequences = [PROMPTS[rid] + _tokens(outs[rid]) for rid in PROMPTS]
    blocks = [tuple(seq[i : i + 2]) for seq in sequences for i in range(0, len(seq) - 1, 2)]
    cached = engine.blocks._cached  # noqa: SLF001: the invariant is about the map itself
    assert cached and all(tuple(key[1:]) in blocks for key in cached)


def test_chunked_prefill_and_preemption_with_drafts() -> None:
    # Eight tokens a step and too few blocks for everyone: drafts share the budget with prompt
    # chunks, never preempt, and preempted requests recompute to the same text.
    engine, runner = _engine(3, num_blocks=10, budget=8)
    prompts = {f"p{i}": [i + 2, 9, i + 4, 9, i + 2, 9, i + 4] for i in range(5)}
    outs = _run(engine, prompts, 20)
    for rid, prompt in prompts.items():
        assert _tokens(outs[rid]) == solo_run(prompt, 20, periodic), rid
    assert engine.stats().num_preemptions > 0 and engine.stats().accepted_draft_tokens > 0
    assert any(b.num_decode < len(b.requests) and any(r.num_draft_tokens for r in b.requests) for b in runner.batches)
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_a_large_batch_drafts_nothing() -> None:
    engine, runner = _engine(4, max_spec_batch=2)
    lengths = {rid: 4 + 5 * i for i, rid in enumerate(PROMPTS)}  # the longest run on with few others
    outs = _run(engine, PROMPTS, lengths)
    for rid, prompt in PROMPTS.items():
        assert _tokens(outs[rid]) == solo_run(prompt, lengths[rid], periodic)
    for batch in runner.batches:
        if len(batch.requests) > 2:
            assert not any(r.num_draft_tokens for r in batch.requests)
    assert any(r.num_draft_tokens for b in runner.batches for r in b.requests)  # the tail, with few left


def test_a_constrained_request_never_drafts() -> None:
    # Its grammar mask follows its own sampled tokens one at a time (worker/grammar.py).
    engine, _ = _engine(4)
    prompt = [5, 6, 7, 8, 5, 6, 7, 8]
    free = Request("free", prompt, SamplingParams(max_new_tokens=8), 0, time.time())
    held = Request("held", prompt, SamplingParams(max_new_tokens=8), 0, time.time())
    held.grammar = "a compiled matcher"  # the scheduler only asks whether there is one
    for req in (free, held):
        engine.scheduler.add(req)
    engine.scheduler.schedule()  # both prompts
    for req in (free, held):  # as the engine would after the prefill step
        req.num_computed_tokens = len(prompt)
        req.all_token_ids.append(5)
    drafts = {r.key: r.num_draft_tokens for r in engine.scheduler.schedule().requests}
    assert drafts == {"free": 4, "held": 0}


def _verifying(runner: FakeRunner) -> list[list[tuple[int, bool]]]:
    """Per step that verifies drafts: each decode's (drafts, whether they are fillers)."""
    steps = [[(r.num_draft_tokens, r.filler_drafts) for r in b.requests[: b.num_decode]] for b in runner.batches]
    return [s for s in steps if any(n for n, _ in s)]


def test_a_verifying_step_gives_every_decode_as_many_drafts_on_a_graph_runner() -> None:
    # Prompts of which some have no n-gram match at first: their decodes get fillers (the last
    # token repeated), which the target accepts or rejects as any draft; the text is the plain run's.
    prompts = {**PROMPTS, "x": [11, 12, 13, 14], "y": [21, 22, 23]}
    engine, runner = _engine(4, uniform=True, max_batch=8, num_blocks=128, budget=64)
    outs = _run(engine, prompts, 30)
    for rid, prompt in prompts.items():
        assert _tokens(outs[rid]) == solo_run(prompt, 30, periodic), rid
    steps = _verifying(runner)
    assert steps and all({n for n, _ in s} == {4} for s in steps)  # one shape: k drafts everywhere
    assert any(filler for s in steps for _, filler in s)
    # Fillers are not the drafter's: its counters hold only the drafts it proposed.
    proposed = sum(n for s in steps for n, filler in s if not filler)
    assert engine.stats().draft_tokens == proposed
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    # Without verification graphs the same step leaves those decodes plain.
    engine, runner = _engine(4, uniform=False, max_batch=8, num_blocks=128, budget=64)
    _run(engine, prompts, 30)
    assert not any(filler for s in _verifying(runner) for _, filler in s)
    assert any(0 in {n for n, _ in s} for s in _verifying(runner))


def test_a_paused_request_gets_fillers_and_stays_paused() -> None:
    engine, runner = _engine(4, uniform=True)
    prompt = [5, 6, 7, 8, 5, 6, 7, 8]
    _, paused = engine.scheduler.drafter.propose(prompt, None, 4, 0)
    paused.paused_until = 10_000  # turned down (low acceptance) for longer than the run
    off = Request("off", prompt, SamplingParams(max_new_tokens=12, ignore_eos=True), 0, time.time())
    off.draft_state = paused
    engine.add_request(off)
    outs = _run(engine, {"on": prompt}, 12)
    for rid in ("on", "off"):
        assert _tokens(outs[rid]) == solo_run(prompt, 12, periodic), rid
    decodes = {r.key: r for b in runner.batches for r in b.requests[: b.num_decode] if r.num_draft_tokens}
    steps = _verifying(runner)
    assert steps and all(len(s) == 2 and {n for n, _ in s} == {4} for s in steps)
    assert decodes["off"].filler_drafts and not decodes["on"].filler_drafts
    assert paused.paused_until == 10_000  # fillers are never observed
    assert engine.stats().draft_tokens == 4 * len(steps)  # the drafts of "on" alone


def test_ngram_drafts_pause_on_low_acceptance_only_without_verification_graphs() -> None:
    # With graphs a verification costs about a decode: a pause would save nothing.
    assert _engine(4)[0].scheduler.drafter.pauses
    assert not _engine(4, uniform=True)[0].scheduler.drafter.pauses
