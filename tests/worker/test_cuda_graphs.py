"""CUDA graphs: which steps may replay one (a pure rule, tested on CPU); decode replay gives the
eager path's greedy tokens (8B and SmolLM2 shapes); verification graphs give the eager path's
logits and hidden rows, and speculation on graphs the plain greedy text; steps launched ahead
(overlapped scheduling) give the tokens of steps run one at a time, guided steps (sampled once
the step before is read) included."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from gateway.grammar import GrammarSpec, compile_grammar
from load.bench_gpu import guided_schema
from load.shapes import write_model_dir
from worker.batch import ScheduledBatch, ScheduledRequest
from worker.engine import LLMEngine
from worker.grammar import GrammarCompiler
from worker.request import Request
from worker.input_builder import build_inputs
from worker.cuda_graphs import graph_query_len, verify_buckets
from worker.model_runner import ModelRunner


def _runner(tmp_path: Path, shape: str, graphs: str, **knobs: object) -> ModelRunner:
    torch.manual_seed(0)
    settings: dict[str, object] = {"device": "cuda", "dtype": "bfloat16", "max_batch_total_tokens": 8192, **knobs}
    config = WorkerConfig(cuda_graphs=graphs, **settings)  # type: ignore[arg-type]
    return ModelRunner(config, write_model_dir(tmp_path, shape), load=False)


def test_a_step_replays_only_when_every_sequence_brings_the_same_tokens() -> None:
    # (sequences, of them decodes, tokens, most tokens of one sequence) -> q of the graph, 0: eager.
    assert graph_query_len(4, 4, 4, 1) == 1  # plain decodes
    assert graph_query_len(4, 2, 4, 1) == 1  # one-token prompt ends are the same forward
    assert graph_query_len(3, 3, 15, 5) == 5  # every decode verifies 4 drafts
    assert graph_query_len(1, 1, 5, 5) == 5
    assert graph_query_len(3, 3, 11, 5) == 0  # one verifies fewer drafts (or none)
    assert graph_query_len(2, 1, 10, 5) == 0  # a prompt chunk of 5 tokens beside a verifying decode
    assert graph_query_len(2, 0, 10, 5) == 0  # prompt chunks only
    assert graph_query_len(2, 1, 9, 8) == 0  # a mixed prefill step
    assert graph_query_len(0, 0, 0, 0) == 0


def test_verification_buckets_stop_at_the_first_one_past_the_speculating_batch() -> None:
    sizes = (1, 2, 4, 8, 16, 32, 64)
    assert verify_buckets(sizes, 32) == (1, 2, 4, 8, 16, 32)
    assert verify_buckets(sizes, 10) == (1, 2, 4, 8, 16)  # a step of 9 or 10 pads to 16
    assert verify_buckets(sizes, 100) == sizes
    assert verify_buckets(sizes, 0) == ()  # speculation never runs a step


def _greedy(runner: ModelRunner, prompts: list[list[int]], new: int, params: SamplingParams | None = None,
            overlap: bool = True, speculate: int | None = None, grammars: GrammarCompiler | None = None,
            per_request: list[SamplingParams] | None = None) -> list[list[int]]:
    config = replace(runner.config, overlap_scheduling=overlap, speculate=speculate)
    engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                       max_model_len=runner.max_model_len, grammars=grammars)
    assert engine.overlap == overlap
    params = params or SamplingParams(max_new_tokens=new, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(Request(f"r{i}", p, per_request[i] if per_request else params, seed=i, arrival_time=0.0))
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.key] += out.new_token_ids
    return [tokens[f"r{i}"] for i in range(len(prompts))]


def test_graphs_are_off_on_cpu(tmp_path: Path) -> None:
    config = WorkerConfig(device="cpu", max_batch_total_tokens=256)
    runner = ModelRunner(config, write_model_dir(tmp_path, "smollm2-135m"), load=False)
    assert runner.graphs is None


@pytest.mark.gpu
@pytest.mark.parametrize("shape", ["smollm2-135m", "llama-3.1-8b"])
def test_replay_gives_eager_greedy_tokens(tmp_path: Path, shape: str) -> None:
    runner = _runner(tmp_path, shape, "1,2,4,8")
    graphs = runner.graphs
    assert graphs is not None and sorted(graphs.graphs) == [(1, 1), (2, 1), (4, 1), (8, 1)]
    assert graphs.capture_seconds > 0
    gen = torch.Generator().manual_seed(1)
    # Four sequences decode together: bucket 4 exactly, so eager and replay run the same shapes.
    prompts = [torch.randint(100, 40000, (n,), generator=gen).tolist() for n in (5, 17, 33, 64)]
    replayed = _greedy(runner, prompts, 24)
    runner.graphs = None
    eager = _greedy(runner, prompts, 24)
    runner.graphs = graphs
    assert replayed == eager


@pytest.mark.gpu
def test_padded_bucket_matches_eager_hidden_states(tmp_path: Path) -> None:
    runner = _runner(tmp_path, "smollm2-135m", "4")
    graphs = runner.graphs
    assert graphs is not None
    params = SamplingParams(max_new_tokens=4)
    # Three sequences with 40, 16 and 3 cached tokens decode one token: bucket 4 with one padding row.
    reqs = [
        ScheduledRequest("a", [11], 40, [0, 1, 2], True, params),
        ScheduledRequest("b", [12], 16, [3, 4], True, params),
        ScheduledRequest("c", [13], 3, [5], True, params),
    ]
    inputs = build_inputs(ScheduledBatch(0, reqs, 3, 3), runner.block_size, runner.device)
    with torch.inference_mode():
        replayed = runner._forward(inputs).clone()  # (3, hidden)
        runner.graphs = None
        eager = runner._forward(inputs)  # (3, hidden)
    runner.graphs = graphs
    assert replayed.shape == eager.shape == (3, 576)
    torch.testing.assert_close(replayed.float(), eager.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_overlapped_steps_give_the_tokens_of_one_step_at_a_time(tmp_path: Path) -> None:
    runner = _runner(tmp_path, "smollm2-135m", "1,2,4,8")
    gen = torch.Generator().manual_seed(2)
    # Staggered lengths: sequences finish at different steps while others keep decoding.
    prompts = [torch.randint(100, 40000, (n,), generator=gen).tolist() for n in (3, 9, 30, 64, 100)]
    for params in (SamplingParams(max_new_tokens=20, ignore_eos=True),
                   SamplingParams(max_new_tokens=20, ignore_eos=True, do_sample=True, temperature=0.8, top_p=0.9)):
        assert _greedy(runner, prompts, 20, params, overlap=True) == _greedy(runner, prompts, 20, params, overlap=False)


def _verify_batch(drafts: int) -> ScheduledBatch:
    params = SamplingParams(max_new_tokens=8)
    # Three sequences with 40, 16 and 3 cached tokens each verify `drafts` drafts: bucket 4, one padding sequence.
    reqs = [
        ScheduledRequest("a", [11] + [21] * drafts, 40, [0, 1, 2, 3], True, params, num_draft_tokens=drafts),
        ScheduledRequest("b", [12] + [22] * drafts, 16, [4, 5], True, params, num_draft_tokens=drafts),
        ScheduledRequest("c", [13] + [23] * drafts, 3, [6], True, params, num_draft_tokens=drafts),
    ]
    return ScheduledBatch(0, reqs, 3, 3 * (1 + drafts))


@pytest.mark.gpu
def test_verification_graphs_give_the_eager_logits_and_hidden_rows(tmp_path: Path) -> None:
    # float32: eager and replay differ only in the GEMMs' row counts (15 rows against the bucket's 20).
    runner = _runner(tmp_path, "smollm2-135m", "1,2,4,8", dtype="float32", speculate=4, speculate_max_batch_size=3)
    graphs = runner.graphs
    assert graphs is not None and graphs.query_len == 5 and graphs.verify_sizes == (1, 2, 4)
    assert {(1, 5), (2, 5), (4, 5)} <= set(graphs.graphs) and (8, 5) not in graphs.graphs
    assert graphs.verify_capture_seconds > 0
    inputs = build_inputs(_verify_batch(4), runner.block_size, runner.device)
    with torch.inference_mode():
        before = graphs.replays.get(5, 0)
        replayed = runner._forward(inputs).clone()  # (15, hidden)
        assert graphs.replays.get(5, 0) == before + 1
        runner.graphs = None
        eager = runner._forward(inputs)  # (15, hidden)
        runner.graphs = graphs
        # The rows the LM head and speculator heads read (every verification row here).
        rows = inputs.logits_rows
        replayed_logits = runner._logits_of(replayed[rows])
        eager_logits = runner._logits_of(eager[rows])
    assert replayed.shape == eager.shape == (15, 576) and rows.shape == (15,)
    torch.testing.assert_close(replayed, eager, atol=1e-3, rtol=1e-3)
    assert replayed_logits is not None and eager_logits is not None
    torch.testing.assert_close(replayed_logits, eager_logits, atol=1e-3, rtol=1e-3)
    # Fewer drafts than the graphs' q: eager, however the step is padded.
    uneven = build_inputs(_verify_batch(2), runner.block_size, runner.device)
    with torch.inference_mode():
        count = dict(graphs.replays)
        runner._forward(uneven)
        assert graphs.replays == count


@pytest.mark.gpu
def test_speculation_on_graphs_gives_the_plain_greedy_text(tmp_path: Path) -> None:
    # float32: a verification row and the plain decode row at its position must pick the same argmax.
    runner = _runner(tmp_path, "smollm2-135m", "1,2,4,8", dtype="float32", speculate=4)
    gen = torch.Generator().manual_seed(3)
    # Prompts that repeat themselves, so n-gram drafts are proposed (and some accepted).
    prompts = [(torch.randint(100, 40000, (n,), generator=gen).tolist() * 3)[: 3 * n] for n in (5, 9, 14)]
    graphs = runner.graphs
    assert graphs is not None
    plain = _greedy(runner, prompts, 24)
    before = graphs.replays.get(5, 0)
    assert _greedy(runner, prompts, 24, speculate=4) == plain
    assert graphs.replays.get(5, 0) > before


@pytest.mark.gpu
def test_overlapped_guided_steps_give_the_tokens_of_one_step_at_a_time(tmp_path: Path, default_model_dir: Path) -> None:
    runner = _runner(tmp_path, "smollm2-135m", "1,2,4,8")
    compiler = GrammarCompiler(default_model_dir / "tokenizer.json", runner.vocab_size, runner.eos_token_ids)
    grammars = [compile_grammar(GrammarSpec.json_schema(guided_schema())),
                compile_grammar(GrammarSpec("regex", "[0-9]{3}-[a-z]{4}")), None,
                compile_grammar(GrammarSpec("regex", "(yes|no)"))]
    params = [SamplingParams(max_new_tokens=24, grammar=g) for g in grammars]
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(100, 40000, (n,), generator=gen).tolist() for n in (3, 30, 9, 64)]
    overlapped = _greedy(runner, prompts, 24, overlap=True, grammars=compiler, per_request=params)
    assert overlapped == _greedy(runner, prompts, 24, overlap=False, grammars=compiler, per_request=params)
    for tokens, grammar in zip(overlapped, grammars, strict=True):
        if grammar is not None:
            assert compiler.matcher(grammar, []).consume_tokens(tokens), tokens
