"""An EAGLE-3 draft model (--speculative-model) on real models (CPU, float32), its checkpoint
written by the test in the published layout: greedy output token for token the same as without
speculation, 16 streams at once with chunked prefill and the prefix cache on, on a tiny random
Llama (a random draft over a reduced vocabulary, and a "successor" draft whose drafts are often
right) and on the default model; seeded sampling draws the same text; on a GPU, the same under
the decode and verification CUDA graphs."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from load.speculator_heads import successors, write_eagle3
from tests.worker.test_engine_model import _run, tiny  # noqa: F401 (a fixture)
from tests.worker.test_engine_model_heads import GREEDY
from tests.worker.test_engine_model_speculative import (  # noqa: F401 (fixtures)
    _outputs, _shared_prefix_prompts, default_plain, grounded, tiny_plain,
)
from worker.engine import LLMEngine
from worker.model_runner import ModelRunner


def _engine(model_dir: Path, draft: Path | None, overlap: bool = False, **overrides: object) -> LLMEngine:
    settings: dict[str, object] = {"device": "cpu", "dtype": "float32", "max_batch_total_tokens": 2048,
                                   "max_batch_prefill_tokens": 32, "block_size": 8, "waiting_served_ratio": 0.0,
                                   "speculative_model": str(draft) if draft is not None else None}
    config = WorkerConfig(**{**settings, **overrides})  # type: ignore[arg-type]
    runner = ModelRunner(config, model_dir)
    runner.can_overlap = overlap  # on CPU the launch runs at once; the placeholder path is the same
    return LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                     max_model_len=runner.max_model_len, speculator=runner.speculator)


@pytest.mark.parametrize("kind", ["random", "successor"])
def test_greedy_with_an_eagle3_draft_on_a_tiny_model_is_unchanged(tiny, tiny_plain, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    follow = successors(tiny_plain, 97) if kind == "successor" else None
    draft = write_eagle3(tmp_path / kind, 64, 97, draft_vocab=None if follow else 48, aux_layers=[0, 1, 1], follow=follow)
    if follow is None:
        # Past 6 running requests the step turns speculation down and, as on CUDA, launches the
        # next step before reading this one (placeholders, no draft); below it the draft extends
        # and proposes again.
        engine = _engine(tiny[0], draft, speculate=4, speculate_max_batch_size=6, overlap=True)
        assert engine.overlap
    else:
        engine = _engine(tiny[0], draft, speculate=4)
    assert _run(engine, _shared_prefix_prompts(), GREEDY) == tiny_plain
    stats = engine.stats()
    assert stats.speculation == "eagle3" and stats.speculate == 4
    assert stats.draft_tokens > 0 and stats.prefix_hit_tokens > 0
    if follow is not None:
        assert stats.accepted_draft_tokens > 0.3 * stats.draft_tokens, stats
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_seeded_sampling_with_an_eagle3_draft_draws_the_same_text(tiny, tiny_plain, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_new_tokens=30, do_sample=True, temperature=0.7, top_k=30, top_p=0.95,
                            repetition_penalty=1.1, min_tokens=5, top_n_tokens=2)
    prompts = dict(list(_shared_prefix_prompts().items())[:6])
    seeds = {rid: 800 + i for i, rid in enumerate(prompts)}
    draft = write_eagle3(tmp_path / "e", 64, 97, aux_layers=[0, 1, 1], follow=successors(tiny_plain, 97))
    plain = _outputs(_engine(tiny[0], None), prompts, params, seeds)
    engine = _engine(tiny[0], draft, speculate=3)
    spec = _outputs(engine, prompts, params, seeds)
    assert engine.stats().draft_tokens > 0  # greedy successors: sampled text rarely takes them
    for rid in prompts:
        assert [t for o in spec[rid] for t in o.new_token_ids] == [t for o in plain[rid] for t in o.new_token_ids]
        got_lp = [lp for o in spec[rid] for lp in o.logprobs]
        assert got_lp == pytest.approx([lp for o in plain[rid] for lp in o.logprobs], abs=1e-4)


def test_greedy_with_an_eagle3_draft_on_the_default_model_is_unchanged(default_model_dir: Path, grounded,  # type: ignore[no-untyped-def]
                                                                       default_plain, tmp_path: Path) -> None:
    # SmolLM2's 30 layers: the draft fuses vLLM's default three (2, 15, 27); a 1,024-token draft vocabulary.
    draft = write_eagle3(tmp_path / "e", 576, 49152, heads=9, kv_heads=3, intermediate=256, draft_vocab=1024)
    engine = _engine(default_model_dir, draft, max_batch_prefill_tokens=128, block_size=16, speculate=4)
    assert engine.runner.model.aux_layers == (2, 15, 27)  # type: ignore[attr-defined]
    some = {rid: ids for i, (rid, ids) in enumerate(grounded.items()) if i % 4 == 0}  # 4 of the 16 streams
    assert _run(engine, some, SamplingParams(max_new_tokens=12)) == {rid: default_plain[rid] for rid in some}
    stats = engine.stats()
    assert stats.speculation == "eagle3" and stats.draft_tokens > 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


@pytest.mark.gpu
def test_an_eagle3_draft_on_cuda_graphs_gives_the_plain_greedy_text(tmp_path: Path) -> None:
    # SmolLM2's shape, random weights, float32 (a verification row and the plain decode row at its
    # position pick the same argmax): the decode and verification graphs return the fused layers'
    # streams beside the hidden state, and the draft runs eagerly after them.
    import torch

    from load.shapes import write_model_dir
    from worker.request import Request

    model_dir = write_model_dir(tmp_path, "smollm2-135m")
    draft = write_eagle3(tmp_path / "e", 576, 49152, heads=9, kv_heads=3, intermediate=1536, draft_vocab=4096)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(100, 40000, (n,), generator=gen).tolist() for n in (5, 9, 14, 40)]

    def greedy(**knobs: object) -> tuple[list[list[int]], ModelRunner]:
        torch.manual_seed(0)  # the same random weights in both runners
        config = WorkerConfig(device="cuda", dtype="float32", max_batch_total_tokens=8192, cuda_graphs="1,2,4,8",
                              **knobs)  # type: ignore[arg-type]
        runner = ModelRunner(config, model_dir, load=False)
        engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                           max_model_len=runner.max_model_len, speculator=runner.speculator)
        for i, p in enumerate(prompts):
            engine.add_request(Request(f"r{i}", p, SamplingParams(max_new_tokens=24, ignore_eos=True), i, 0.0))
        tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
        while engine.has_unfinished_requests():
            for out in engine.step():
                tokens[str(out.key)] += out.new_token_ids
        assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
        return [tokens[f"r{i}"] for i in range(len(prompts))], runner

    plain, _ = greedy()
    got, runner = greedy(speculative_model=str(draft), speculate=4)
    assert got == plain
    assert runner.draft_model is not None and runner.graphs is not None
    assert runner.graphs.replays.get(5, 0) > 0  # verification steps of 4 drafts replayed their graph
