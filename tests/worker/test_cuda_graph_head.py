"""The decode graphs' head (LM head, argmax, logprobs, packed results; a verification graph's
accepted drafts), checked on the CPU: its ops give the greedy sampler's and the acceptance's
results bit for bit, and a runner that takes its steps' tokens from such replayed results
(load/eager_graphs.py) generates the eager runner's tokens, speculating or not; on a GPU, a
replay's head gives the eager head's results, and --graph-head off leaves the graphs at the
hidden states."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from load.eager_graphs import EagerGraphs, head_outputs
from load.shapes import write_model_dir
from worker import sampler
from worker.batch import ScheduledBatch, ScheduledRequest
from worker.cuda_graphs import run_head
from worker.engine import LLMEngine
from worker.input_builder import build_inputs
from worker.logits_layout import LogitsLayout
from worker.model_runner import ModelRunner
from worker.request import Request
from worker.speculative import verify


def _head(weight: torch.Tensor):  # type: ignore[no-untyped-def]
    def head(h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return out.copy_(h @ weight.T) if out is not None else h @ weight.T

    return head


def test_the_head_gives_the_greedy_samplers_results() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(300, 16, generator=gen)
    hidden = torch.randn(5, 16, generator=gen)
    head = _head(weight)
    outputs = head_outputs(8, 300, 8)  # a bucket of 8 rows; the step's 5 come first
    run_head(head, hidden, outputs)
    params = SamplingParams(max_new_tokens=1)
    reqs = [ScheduledRequest(f"r{i}", [1], 0, [0], True, params) for i in range(5)]
    tensors = sampler.prepare(reqs, 300, torch.device("cpu"))
    assert sampler.greedy_only(tensors)
    want = sampler.sample(head(hidden), tensors)
    assert torch.equal(outputs.logits[:5], head(hidden))
    assert torch.equal(outputs.greedy[:5], want.token_ids)
    assert torch.equal(outputs.greedy_logprobs[:5], want.logprobs)
    layout = LogitsLayout(rows=list(range(5)), sample_batch_idx=list(range(5)), sample_rows=list(range(5)))
    packed = layout.pack(0, want.token_ids, want.logprobs, None, None, None)
    assert packed is not None and torch.equal(outputs.packed[:10], packed)
    assert outputs.greedy[5:].eq(-1).all()  # rows past the step's are left alone
    assert outputs.accepted.eq(-1).all()  # a decode graph counts no drafts


def test_a_verification_graphs_head_gives_the_acceptance_and_packs_it() -> None:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(40, 16, generator=gen)
    head = _head(weight)
    hidden = torch.randn(3 * 4, 16, generator=gen)  # three sequences, each its last token then 3 drafts
    argmax = head(hidden).argmax(dim=-1).view(3, 4)
    # Sequence 0's drafts are all its rows' argmaxes, 1's only the first, 2's none.
    drafts = argmax[:, :3].clone()
    drafts[1, 1:] = (drafts[1, 1:] + 1) % 40
    drafts[2, 0] = (drafts[2, 0] + 1) % 40
    input_ids = torch.cat([torch.full((3, 1), 7), drafts], dim=1).flatten()  # (12,)
    outputs = head_outputs(16, 40, 4)  # a bucket of 4 sequences; the step's 3 come first
    run_head(head, hidden, outputs, 4, input_ids)
    layout = LogitsLayout()
    for i in range(3):
        layout.add_verified(i, 4 * i, input_ids[4 * i + 1 : 4 * i + 4].tolist())
    params = SamplingParams(max_new_tokens=8)
    reqs = [ScheduledRequest(f"r{i}", [7, *layout.verify_spans[i][2]], 0, [0], True, params, num_draft_tokens=3)
            for i in range(3)]
    want = sampler.sample(head(hidden), sampler.prepare(verify.sampling_rows(reqs, layout), 40, torch.device("cpu")))
    accepted = verify.accepted_counts(want.token_ids, layout, torch.device("cpu"))  # the upload-and-gather way
    assert accepted.tolist() == [3, 1, 0]
    assert torch.equal(outputs.accepted[:3], accepted) and outputs.accepted[3] == -1
    packed = layout.pack(0, want.token_ids, want.logprobs, None, None, None, accepted)
    assert packed is not None and torch.equal(outputs.packed[: 2 * 12 + 3], packed)


@pytest.mark.parametrize(("params", "greedy"), [
    (SamplingParams(max_new_tokens=8), True),
    (SamplingParams(max_new_tokens=8, do_sample=True, temperature=0.7), False),
    (SamplingParams(max_new_tokens=8, repetition_penalty=1.2), False),
    (SamplingParams(max_new_tokens=8, top_n_tokens=2), False),
    (SamplingParams(max_new_tokens=8, min_tokens=4), False),  # EOS held back: the logits change
])
def test_greedy_only_is_the_argmax_of_unchanged_logits(params: SamplingParams, greedy: bool) -> None:
    req = ScheduledRequest("r", [1], 0, [0], True, params, all_token_ids=[1, 2], num_generated=0)
    tensors = sampler.prepare([req], 50, torch.device("cpu"), eos_token_ids=frozenset({0}))
    assert sampler.greedy_only(tensors) is greedy


def _generate(runner: ModelRunner, prompts: list[list[int]], params: SamplingParams, overlap: bool) -> list[list[int]]:
    config = replace(runner.config, overlap_scheduling=overlap)
    engine = LLMEngine(config, runner, num_blocks=runner.num_blocks, eos_token_ids=runner.eos_token_ids,
                       max_model_len=runner.max_model_len)
    for i, p in enumerate(prompts):
        engine.add_request(Request(f"r{i}", p, params, seed=i, arrival_time=0.0))
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.key] += out.new_token_ids
    return [tokens[f"r{i}"] for i in range(len(prompts))]


@pytest.mark.parametrize("overlap", [True, False])
def test_steps_that_take_the_heads_results_generate_the_eager_tokens(tmp_path: Path, overlap: bool,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    config = WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=512)
    runner = ModelRunner(config, write_model_dir(tmp_path, "smollm2-135m"), load=False)
    # One-token prompts: every step, their first too, is a one-token-per-row step that the graphs take.
    prompts = [[5], [777], [12345]]
    greedy = SamplingParams(max_new_tokens=8, ignore_eos=True)
    sampled = SamplingParams(max_new_tokens=8, ignore_eos=True, do_sample=True, temperature=0.8, top_k=20)
    eager = {p: _generate(runner, prompts, p, overlap) for p in (greedy, sampled)}
    fake = EagerGraphs(runner)
    runner.graphs = fake  # type: ignore[assignment]
    calls = []
    real_sample = sampler.sample
    monkeypatch.setattr(sampler, "sample", lambda *a, **k: calls.append(1) or real_sample(*a, **k))
    assert _generate(runner, prompts, greedy, overlap) == eager[greedy]
    assert fake.replays[1] >= 8  # every step replayed
    assert not calls  # and took the head's argmax: the sampler never ran
    assert _generate(runner, prompts, sampled, overlap) == eager[sampled]
    assert calls  # sampled rows: the sampler, on the replayed logits


@pytest.mark.gpu
@pytest.mark.parametrize("graph_head", [True, False])
def test_a_replay_with_the_head_gives_the_eager_heads_results(tmp_path: Path, graph_head: bool) -> None:
    torch.manual_seed(0)
    config = WorkerConfig(device="cuda", dtype="bfloat16", max_batch_total_tokens=8192, cuda_graphs="4",
                          graph_head=graph_head)
    runner = ModelRunner(config, write_model_dir(tmp_path, "smollm2-135m"), load=False)
    graphs = runner.graphs
    assert graphs is not None and (graphs.head is not None) is graph_head
    params = SamplingParams(max_new_tokens=4)
    # Three decodes in bucket 4: one padding row, so no packed results.
    reqs = [ScheduledRequest("a", [11], 40, [0, 1, 2], True, params), ScheduledRequest("b", [12], 16, [3, 4], True, params),
            ScheduledRequest("c", [13], 3, [5], True, params)]
    inputs = build_inputs(ScheduledBatch(0, reqs, 3, 3), runner.block_size, runner.device)
    with torch.inference_mode():
        replayed = graphs.try_replay(inputs)
        assert replayed is not None and replayed.packed is None
        if not graph_head:
            assert replayed.logits is None
            return
        assert replayed.logits is not None and replayed.greedy is not None and replayed.greedy_logprobs is not None
        want = runner.model.compute_logits(replayed.hidden)  # (3, V): the eager head over the same rows
        torch.testing.assert_close(replayed.logits, want, atol=2e-2, rtol=2e-2)
        assert torch.equal(replayed.greedy, torch.argmax(replayed.logits, dim=-1))
        raw = torch.log_softmax(replayed.logits, dim=-1).gather(1, replayed.greedy.unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(replayed.greedy_logprobs, raw)
