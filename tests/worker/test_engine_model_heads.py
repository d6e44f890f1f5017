"""Speculator heads on real models (CPU, float32): Medusa heads (their own projections, or the LM
head shared) and IBM's MLP speculator (tied or not), written by the test. Greedy output is token
for token the same as without speculation, 16 streams at once with chunked prefill and the prefix
cache on; seeded sampling draws the same text, and 2,000 draws follow the model's distribution
(chi-square, with an EAGLE-3 draft too); drafts and accepted drafts are counted. Random heads
are rarely right; "successor" heads (load/speculator_heads.py) are, often enough to
show acceptance."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from tests.worker.speculative.test_verify import _chi_square_p
from load.speculator_heads import successors, write_eagle3, write_medusa, write_mlp_speculator
from tests.worker.test_engine_model import _run, tiny  # noqa: F401 (a fixture)
from tests.worker.test_engine_model_speculative import (  # noqa: F401 (fixtures)
    _outputs, _shared_prefix_prompts, default_plain, grounded, tiny_plain,
)
from worker.engine import LLMEngine
from worker.model_runner import ModelRunner
from worker.request import Request

GREEDY = SamplingParams(max_new_tokens=40, ignore_eos=True)


def _engine(model_dir: Path, heads: Path | None, **overrides: object) -> LLMEngine:
    settings: dict[str, object] = {"device": "cpu", "dtype": "float32", "max_batch_total_tokens": 2048,
                                   "max_batch_prefill_tokens": 32, "block_size": 8, "waiting_served_ratio": 0.0,
                                   "speculative_model": str(heads) if heads is not None else None}
    config = WorkerConfig(**{**settings, **overrides})  # type: ignore[arg-type]
    runner = ModelRunner(config, model_dir)
    return LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                     max_model_len=runner.max_model_len, speculator=runner.speculator)


def _output_rows(model_dir: Path) -> torch.Tensor:
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        name = "lm_head.weight" if "lm_head.weight" in f.keys() else "model.embed_tokens.weight"  # noqa: SIM118
        return f.get_tensor(name)


HEADS: dict[str, Callable[[Path, Path, list[int]], Path]] = {
    "medusa-own-successor": lambda d, m, follow: write_medusa(
        d, 64, 97, heads=3, own_projection=True, output_rows=_output_rows(m), follow=follow),
    "medusa-shared-random": lambda d, m, follow: write_medusa(d, 64, 97, heads=4, layers=2, own_projection=False),
    "mlp-successor": lambda d, m, follow: write_mlp_speculator(d, 64, 97, n_predict=3, inner=128, follow=follow),
    "mlp-tied-random": lambda d, m, follow: write_mlp_speculator(
        d, 64, 97, n_predict=4, inner=32, tie_weights=True, scale_input=True),
}


@pytest.mark.parametrize("kind", list(HEADS))
def test_greedy_with_heads_on_a_tiny_model_is_unchanged(tiny, tiny_plain, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    heads = HEADS[kind](tmp_path / kind, tiny[0], successors(tiny_plain, 97))
    engine = _engine(tiny[0], heads)
    got = _run(engine, _shared_prefix_prompts(), GREEDY)
    assert got == tiny_plain
    stats = engine.stats()
    assert stats.speculation == ("medusa" if kind.startswith("medusa") else "mlp_speculator")
    assert stats.speculate == engine.scheduler.drafter.num_speculative > 0
    assert stats.draft_tokens > 0 and stats.prefix_hit_tokens > 0
    assert sum(stats.accepted_by_position) == stats.accepted_draft_tokens
    if "successor" in kind:  # heads that know the text's successors: a good share of their drafts is kept
        assert stats.accepted_draft_tokens > 0.2 * stats.draft_tokens, stats
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_speculate_takes_the_first_heads(tiny, tiny_plain, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    heads = write_mlp_speculator(tmp_path / "mlp", 64, 97, n_predict=4, inner=128, follow=successors(tiny_plain, 97))
    engine = _engine(tiny[0], heads, speculate=2)
    assert engine.scheduler.drafter.num_speculative == 2
    assert _run(engine, _shared_prefix_prompts(), GREEDY) == tiny_plain
    assert engine.stats().accepted_draft_tokens > 0 and len(engine.stats().drafted_by_position) == 2
    assert _engine(tiny[0], heads, speculate=0).scheduler.drafter.method is None  # 0: off, heads or not


def test_seeded_sampling_with_heads_draws_the_same_text(tiny, tiny_plain, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_new_tokens=30, do_sample=True, temperature=0.7, top_k=30, top_p=0.95,
                            repetition_penalty=1.1, min_tokens=5, top_n_tokens=2)
    prompts = dict(list(_shared_prefix_prompts().items())[:6])
    seeds = {rid: 700 + i for i, rid in enumerate(prompts)}
    heads = write_medusa(tmp_path / "medusa", 64, 97, heads=3, own_projection=True, output_rows=_output_rows(tiny[0]),
                         follow=successors(tiny_plain, 97))
    plain = _outputs(_engine(tiny[0], None), prompts, params, seeds)
    engine = _engine(tiny[0], heads)
    spec = _outputs(engine, prompts, params, seeds)
    assert engine.stats().draft_tokens > 0
    for rid in prompts:
        assert [t for o in spec[rid] for t in o.new_token_ids] == [t for o in plain[rid] for t in o.new_token_ids]
        got_lp = [lp for o in spec[rid] for lp in o.logprobs]
        assert got_lp == pytest.approx([lp for o in plain[rid] for lp in o.logprobs], abs=1e-4)
        assert spec[rid][-1].finish_reason == plain[rid][-1].finish_reason


@pytest.mark.parametrize("kind", ["medusa", "mlp_speculator"])
def test_greedy_with_heads_on_the_default_model_is_unchanged(default_model_dir: Path, grounded, default_plain,  # type: ignore[no-untyped-def]
                                                             tmp_path: Path, kind: str) -> None:
    hidden, vocab = 576, 49152
    if kind == "medusa":
        heads = write_medusa(tmp_path / kind, hidden, vocab, heads=4, own_projection=False)
    else:
        heads = write_mlp_speculator(tmp_path / kind, hidden, vocab, n_predict=3, inner=64)
    engine = _engine(default_model_dir, heads, max_batch_prefill_tokens=128, block_size=16)
    some = {rid: ids for i, (rid, ids) in enumerate(grounded.items()) if i % 5 == 0}  # 4 of the 16 streams
    got = _run(engine, some, SamplingParams(max_new_tokens=12))
    assert got == {rid: default_plain[rid] for rid in some}
    stats = engine.stats()
    assert stats.speculation == kind and stats.draft_tokens > 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def _merged(counts: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Bins expected fewer than 5 times are pooled, so the chi-square approximation holds.
    small = probs * counts.sum() < 5
    if not small.any():
        return counts, probs
    return (torch.cat([counts[~small], counts[small].sum(0, keepdim=True)]),
            torch.cat([probs[~small], probs[small].sum(0, keepdim=True)]))


def _draws(engine: LLMEngine, prompt: list[int], params: SamplingParams, seeds: range) -> list[list[int]]:
    # Every request at once: a few large steps rather than one step per arrival.
    for s in seeds:
        engine.add_request(Request(f"d{s}", prompt, params, s, time.time()))
    out: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            out.setdefault(o.key, []).extend(o.new_token_ids)  # type: ignore[arg-type]
    return [out[f"d{s}"] for s in seeds]


@pytest.mark.parametrize("kind", ["mlp_speculator", "eagle3"])
def test_sampled_tokens_with_heads_follow_the_models_distribution(tiny, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    # As tests/worker/speculative/test_verify.py, on the real engine: 2,000 seeded draws at
    # temperature 1 of one prompt, heads (or an EAGLE-3 draft) drafting the likeliest second
    # token after the first.
    path, reference = tiny
    prompt, draws = [5, 17, 33, 2, 61, 8], 2000
    with torch.no_grad():
        p0 = torch.softmax(reference(torch.tensor([prompt])).logits[0, -1].double(), -1)  # (V,)
        p1 = torch.softmax(reference(torch.tensor([prompt + [x] for x in range(97)])).logits[:, -1].double(), -1)  # (V, V)
    follow = p1.argmax(1).tolist()
    if kind == "eagle3":
        heads = write_eagle3(tmp_path / kind, 64, 97, aux_layers=[0, 1, 1], follow=follow)
    else:
        heads = write_mlp_speculator(tmp_path / kind, 64, 97, n_predict=2, inner=128, follow=follow)
    params = SamplingParams(max_new_tokens=3, do_sample=True, temperature=1.0, ignore_eos=True)
    # Large steps, every one of them drafting.
    big = {"max_batch_total_tokens": 16384, "max_batch_prefill_tokens": 2048, "speculate_max_batch_size": 256}
    engine = _engine(path, heads, **big, speculate=2)
    spec = _draws(engine, prompt, params, range(draws))
    stats = engine.stats()
    assert stats.draft_tokens >= draws and 0 < stats.accepted_draft_tokens < stats.draft_tokens
    assert spec[:200] == _draws(_engine(path, None, **big), prompt, params, range(200))  # seeded: as without heads
    first = torch.tensor([ids[0] for ids in spec])
    second = torch.tensor([ids[1] for ids in spec])
    assert _chi_square_p(*_merged(torch.bincount(first, minlength=97).double(), p0)) > 0.01
    assert _chi_square_p(*_merged(torch.bincount(second, minlength=97).double(), p0 @ p1)) > 0.01
