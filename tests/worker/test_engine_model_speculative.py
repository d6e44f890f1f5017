"""--speculate on real models (CPU, float32): greedy output token for token the same as without,
on a tiny random Llama and on the default model, 16 streams at once with chunked prefill and the
prefix cache on; seeded sampling (with penalties, truncation and min_tokens) draws the same text;
each accepted token carries the logprob and top tokens a plain step would have given it; filler
drafts (a verifying step's evened-out decodes, as on verification CUDA graphs) change nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from common.sampling_params import SamplingParams
from load.eager_graphs import EagerGraphs
from tests.worker.test_engine_model import _engine, _run, _tiny_prompts, tiny  # noqa: F401 (a fixture)
from worker.batch import RequestOutput
from worker.engine import LLMEngine
from worker.request import Request
from worker.speculative import verify

STREAMS = 16


def _shared_prefix_prompts() -> dict[str, list[int]]:
    # Half the streams share a 24-token prefix (prefix-cache hits); prompts repeat themselves, as
    # the ones speculation serves do.
    base = _tiny_prompts(STREAMS)
    prefix = base["p0"][:8] * 3
    return {rid: (prefix + ids if i % 2 else ids * 2)[:60] for i, (rid, ids) in enumerate(base.items())}


@pytest.fixture(scope="module")
def tiny_plain(tiny) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    engine = _engine(tiny[0], max_batch_prefill_tokens=32, block_size=8)
    return _run(engine, _shared_prefix_prompts(), SamplingParams(max_new_tokens=40, ignore_eos=True))


@pytest.mark.parametrize("speculate", [1, 2, 3, 4])
def test_greedy_on_a_tiny_model_is_unchanged(tiny, tiny_plain, speculate: int) -> None:  # type: ignore[no-untyped-def]
    engine = _engine(tiny[0], max_batch_prefill_tokens=32, block_size=8, speculate=speculate)
    got = _run(engine, _shared_prefix_prompts(), SamplingParams(max_new_tokens=40, ignore_eos=True))
    assert got == tiny_plain
    stats = engine.stats()
    assert stats.accepted_draft_tokens > 0 and stats.prefix_hit_tokens > 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_filler_drafts_leave_greedy_unchanged(tiny, tiny_plain) -> None:  # type: ignore[no-untyped-def]
    # As on a GPU with verification graphs: in a step that verifies drafts, the decodes without
    # any verify fillers (their last token repeated), rejected or accepted as the model decides.
    engine = _engine(tiny[0], max_batch_prefill_tokens=128, block_size=8, speculate=4)
    engine.scheduler.uniform_drafts = True
    batches = []
    schedule = engine.scheduler.schedule

    def recorded():  # type: ignore[no-untyped-def]
        batches.append(schedule())
        return batches[-1]

    engine.scheduler.schedule = recorded  # type: ignore[method-assign]
    got = _run(engine, _shared_prefix_prompts(), SamplingParams(max_new_tokens=40, ignore_eos=True))
    assert got == tiny_plain
    assert any(r.filler_drafts for b in batches for r in b.requests)
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_overlapped_speculation_leaves_greedy_unchanged(tiny, tiny_plain) -> None:  # type: ignore[no-untyped-def]
    # As on a GPU: each step launched before the step before it is read, on an assumption of
    # how many drafts that one keeps (worker/engine.py); fillers and no pauses, as on graphs.
    engine = _engine(tiny[0], overlap=True, max_batch_prefill_tokens=32, block_size=8, speculate=4)
    engine.scheduler.uniform_drafts = True
    engine.scheduler.drafter.pauses = False
    got = _run(engine, _shared_prefix_prompts(), SamplingParams(max_new_tokens=40, ignore_eos=True))
    assert got == tiny_plain
    assert engine.stats().accepted_draft_tokens > 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


@pytest.mark.parametrize("overlap", [False, True], ids=["one-step", "overlapped"])
def test_verification_graphs_acceptance_leaves_greedy_unchanged(tiny, tiny_plain, overlap: bool,  # type: ignore[no-untyped-def]
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # As on a GPU whose verification graphs run the head: a greedy verifying step takes its
    # tokens and its accepted drafts from the replay (load/eager_graphs.py runs it on the CPU).
    engine = _engine(tiny[0], overlap=overlap, max_batch_prefill_tokens=32, block_size=8, speculate=4)
    engine.scheduler.uniform_drafts = True
    engine.scheduler.drafter.pauses = False
    graphs = engine.runner.graphs = EagerGraphs(engine.runner, query_len=5)  # type: ignore[attr-defined]
    counted, verifying = [], []
    real_counts, real_launch = verify.accepted_counts, engine.runner.launch
    monkeypatch.setattr(verify, "accepted_counts", lambda *a, **k: counted.append(1) or real_counts(*a, **k))
    engine.runner.launch = lambda batch, *a, **k: (  # type: ignore[method-assign]
        verifying.append(any(r.num_draft_tokens for r in batch.requests)) or real_launch(batch, *a, **k))
    got = _run(engine, _shared_prefix_prompts(), SamplingParams(max_new_tokens=40, ignore_eos=True))
    assert got == tiny_plain
    assert graphs.replays.get(5, 0) > 0 and engine.stats().accepted_draft_tokens > 0
    # The eager verifying steps (mixed with prompt chunks) count on the device; the replayed ones take the head's.
    assert len(counted) == sum(verifying) - graphs.replays[5]
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_overlapped_speculation_leaves_seeded_sampling_unchanged(tiny) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_new_tokens=30, do_sample=True, temperature=0.7, top_k=30, top_p=0.95, min_tokens=5)
    prompts = dict(list(_shared_prefix_prompts().items())[:6])
    seeds = {rid: 700 + i for i, rid in enumerate(prompts)}
    plain = _outputs(_engine(tiny[0], max_batch_prefill_tokens=32), prompts, params, seeds)
    engine = _engine(tiny[0], overlap=True, max_batch_prefill_tokens=32, speculate=3)
    engine.scheduler.uniform_drafts = True
    spec = _outputs(engine, prompts, params, seeds)
    assert engine.stats().accepted_draft_tokens > 0
    for rid in prompts:
        assert [t for o in spec[rid] for t in o.new_token_ids] == [t for o in plain[rid] for t in o.new_token_ids], rid


def _outputs(engine: LLMEngine, prompts: dict[str, list[int]], params: SamplingParams,
             seeds: dict[str, int]) -> dict[str, list[RequestOutput]]:
    for rid, ids in prompts.items():
        engine.add_request(Request(rid, ids, params, seeds[rid], time.time()))
    outs: dict[str, list[RequestOutput]] = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            outs.setdefault(o.key, []).append(o)  # type: ignore[arg-type]
    return outs


@pytest.mark.parametrize("fillers", [False, True], ids=["drafts", "drafts-and-fillers"])
def test_seeded_sampling_logprobs_and_top_tokens_are_unchanged(tiny, fillers: bool) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_new_tokens=30, do_sample=True, temperature=0.7, top_k=30, top_p=0.95,
                            repetition_penalty=1.1, frequency_penalty=0.1, min_tokens=5, top_n_tokens=3)
    prompts = dict(list(_shared_prefix_prompts().items())[:6])
    seeds = {rid: 500 + i for i, rid in enumerate(prompts)}
    plain = _outputs(_engine(tiny[0], max_batch_prefill_tokens=32), prompts, params, seeds)
    engine = _engine(tiny[0], max_batch_prefill_tokens=32, speculate=3)
    engine.scheduler.uniform_drafts = fillers  # fillers: as on a runner with verification graphs
    spec = _outputs(engine, prompts, params, seeds)
    assert engine.stats().accepted_draft_tokens > 0
    for rid in prompts:
        tokens = [t for o in plain[rid] for t in o.new_token_ids]
        assert [t for o in spec[rid] for t in o.new_token_ids] == tokens, rid
        want_lp = [lp for o in plain[rid] for lp in o.logprobs]
        got_lp = [lp for o in spec[rid] for lp in o.logprobs]
        assert got_lp == pytest.approx(want_lp, abs=1e-4)
        want_top = [t for o in plain[rid] for t in o.top_tokens]
        got_top = [t for o in spec[rid] for t in o.top_tokens]
        assert [[i for i, _ in t] for t in got_top] == [[i for i, _ in t] for t in want_top]
        assert len(got_top) == len(tokens)
        assert spec[rid][-1].finish_reason == plain[rid][-1].finish_reason


@pytest.fixture(scope="module")
def grounded(default_model_dir: Path) -> dict[str, list[int]]:
    """Chat prompts that ask to repeat or edit a given text: where n-gram drafts are accepted."""
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    texts = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog.",
             "Roses are red,\nviolets are blue.", "for i in range(10):\n    print(i)\n"]
    asks = ["Repeat exactly:\n", "Copy this text:\n", "Rewrite in upper case:\n", "Say again:\n"]
    prompts = {}
    for i in range(STREAMS):
        chat = [{"role": "user", "content": asks[i % 4] + texts[(i // 4) % 4]}]
        prompts[f"g{i}"] = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    return prompts


@pytest.fixture(scope="module")
def default_plain(default_model_dir: Path, grounded) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    engine = _engine(default_model_dir, max_batch_prefill_tokens=128)
    return _run(engine, grounded, SamplingParams(max_new_tokens=12))


@pytest.mark.parametrize("speculate", [1, 2, 3, 4])
def test_greedy_on_the_default_model_is_unchanged(default_model_dir: Path, grounded, default_plain,  # type: ignore[no-untyped-def]
                                                  speculate: int) -> None:
    engine = _engine(default_model_dir, max_batch_prefill_tokens=128, speculate=speculate)
    got = _run(engine, grounded, SamplingParams(max_new_tokens=12))
    assert got == default_plain
    stats = engine.stats()
    assert stats.accepted_draft_tokens > 0 and stats.prefix_hit_tokens > 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


@pytest.mark.parametrize("do_sample", [False, True])
def test_the_watermark_is_the_same_with_drafts(tiny, do_sample: bool) -> None:  # type: ignore[no-untyped-def]
    # Each verification row's green list is its own previous token's (the draft before it), so
    # watermarked greedy and seeded sampled tokens equal a plain step's, and differ from unmarked.
    prompts = dict(list(_shared_prefix_prompts().items())[:6])
    seeds = {rid: 900 + i for i, rid in enumerate(prompts)}

    def tokens(watermark: bool, speculate: int) -> dict[str, list[int]]:
        params = SamplingParams(max_new_tokens=30, ignore_eos=True, watermark=watermark, do_sample=do_sample,
                                temperature=0.7 if do_sample else 1.0, top_k=3 if do_sample else 0)
        engine = _engine(tiny[0], max_batch_prefill_tokens=32, block_size=8, speculate=speculate)
        outs = _outputs(engine, prompts, params, seeds)
        if speculate:
            assert engine.stats().accepted_draft_tokens > 0
        return {rid: [t for o in outs[rid] for t in o.new_token_ids] for rid in prompts}

    marked = tokens(True, 0)
    assert tokens(True, 3) == marked
    assert tokens(False, 0) != marked
