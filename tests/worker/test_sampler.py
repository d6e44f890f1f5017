"""The batched sampler on CPU: greedy, warpers, penalties, and per-request seeded reproducibility."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from common.sampling_params import SamplingParams
from worker import sampler
from worker.batch import ScheduledRequest

V = 50


def _req(params: SamplingParams, seed: int = 0, history: list[int] | None = None, generated: int = 0) -> ScheduledRequest:
    return ScheduledRequest("r", [1], 0, [0], True, params, all_token_ids=history or [1], num_generated=generated, seed=seed)


def _sample(logits: torch.Tensor, reqs: list[ScheduledRequest]) -> sampler.SampleResult:
    return sampler.sample(logits, sampler.prepare(reqs, V, torch.device("cpu")))


def test_greedy_is_argmax_with_raw_logprobs() -> None:
    logits = torch.randn(3, V)
    result = _sample(logits, [_req(SamplingParams(max_new_tokens=1))] * 3)
    assert result.token_ids.tolist() == logits.argmax(-1).tolist()
    expected = torch.log_softmax(logits, -1).max(-1).values
    torch.testing.assert_close(result.logprobs, expected)


def test_top_k_one_is_greedy_even_when_sampling() -> None:
    logits = torch.randn(4, V)
    params = SamplingParams(max_new_tokens=1, do_sample=True, top_k=1, temperature=2.0)
    result = _sample(logits, [_req(params, seed=s) for s in range(4)])
    assert result.token_ids.tolist() == logits.argmax(-1).tolist()


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.full((1, V), -10.0)
    logits[0, 3], logits[0, 7] = 5.0, 4.0  # ~0.73 and ~0.27 of the mass
    params = SamplingParams(max_new_tokens=1, do_sample=True, top_p=0.5)
    drawn = {int(_sample(logits, [_req(params, seed=s)]).token_ids[0]) for s in range(40)}
    assert drawn == {3}


def test_same_seed_same_token_whatever_the_batch() -> None:
    params = SamplingParams(max_new_tokens=1, do_sample=True, temperature=1.0)
    torch.manual_seed(0)
    row = torch.randn(1, V)
    alone = _sample(row, [_req(params, seed=1234, generated=5)]).token_ids[0]
    others = torch.randn(5, V)
    batch = torch.cat([others[:2], row, others[2:]])
    reqs = [_req(params, seed=s, generated=5) for s in (1, 2)] + [_req(params, seed=1234, generated=5)]
    reqs += [_req(SamplingParams(max_new_tokens=1), seed=9)] * 3
    together = _sample(batch, reqs).token_ids[2]
    assert int(alone) == int(together)


def test_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.2] + [0.0] * (V - 3))
    logits = torch.log(probs.clamp_min(1e-12)).unsqueeze(0)
    params = SamplingParams(max_new_tokens=1, do_sample=True)
    counts = torch.zeros(3)
    for step in range(600):
        counts[int(_sample(logits, [_req(params, seed=7, generated=step)]).token_ids[0])] += 1
    freq = counts / counts.sum()
    assert torch.allclose(freq, probs[:3], atol=0.07), freq


def test_repetition_and_presence_penalties_push_seen_tokens_down() -> None:
    logits = torch.zeros(1, V)
    logits[0, 5] = 2.0
    logits[0, 6] = 1.9
    seen = [5, 5, 5]
    rep = _sample(logits, [_req(SamplingParams(max_new_tokens=1, repetition_penalty=1.5), history=seen)])
    assert int(rep.token_ids[0]) == 6
    freq = _sample(logits, [_req(SamplingParams(max_new_tokens=1, frequency_penalty=0.1), history=seen)])
    assert int(freq.token_ids[0]) == 6  # 2.0 - 3 x 0.1 < 1.9
    pres = _sample(logits, [_req(SamplingParams(max_new_tokens=1, presence_penalty=0.05), history=seen)])
    assert int(pres.token_ids[0]) == 5  # 2.0 - 0.05 > 1.9: counted once


def test_top_n_alternatives_are_sorted_logprobs() -> None:
    logits = torch.randn(2, V)
    result = _sample(logits, [_req(SamplingParams(max_new_tokens=1, top_n_tokens=3))] * 2)
    assert result.top_ids is not None and result.top_logprobs is not None
    expected = torch.log_softmax(logits, -1).topk(3)
    assert result.top_ids.tolist() == expected.indices.tolist()
    assert all(math.isfinite(x) for x in result.top_logprobs.flatten().tolist())


@pytest.mark.parametrize(
    "knobs",
    [
        {"temperature": 0.7, "top_k": 5},
        {"temperature": 1.3, "top_p": 0.8},
        {"typical_p": 0.6},
        {"temperature": 0.9, "top_k": 20, "top_p": 0.9, "typical_p": 0.8},
        {"temperature": 0.8},  # nothing truncated: no sort at all
    ],
)
def test_warpers_keep_the_same_tokens_as_transformers(knobs: dict) -> None:  # type: ignore[type-arg]
    torch.manual_seed(3)
    logits = torch.randn(4, V) * 3
    params = SamplingParams(max_new_tokens=1, do_sample=True, **knobs)
    probs = sampler._warp(logits, sampler.prepare([_req(params)] * 4, V, torch.device("cpu")))
    want = logits.clone()
    warpers = [TemperatureLogitsWarper(knobs.get("temperature", 1.0))]
    if "top_k" in knobs:
        warpers.append(TopKLogitsWarper(knobs["top_k"]))
    if "top_p" in knobs:
        warpers.append(TopPLogitsWarper(knobs["top_p"]))
    if "typical_p" in knobs:
        warpers.append(TypicalLogitsWarper(knobs["typical_p"]))
    for warper in warpers:
        want = warper(torch.zeros(4, 1, dtype=torch.long), want)
    assert ((probs > 0) == torch.isfinite(want)).all()
    torch.testing.assert_close(probs, want.softmax(-1), rtol=1e-5, atol=1e-6)


def test_rows_without_truncation_keep_the_whole_distribution_beside_rows_with_it() -> None:
    torch.manual_seed(5)
    logits = torch.randn(3, V) * 3
    rows = [SamplingParams(max_new_tokens=1, do_sample=True, temperature=0.8),
            SamplingParams(max_new_tokens=1, do_sample=True, top_k=3),
            SamplingParams(max_new_tokens=1, do_sample=True, typical_p=0.5)]
    tensors = sampler.prepare([_req(p) for p in rows], V, torch.device("cpu"))
    assert tensors.any_truncation and tensors.any_typical
    probs = sampler._warp(logits, tensors)
    torch.testing.assert_close(probs[0], (logits[0] / 0.8).softmax(-1), rtol=1e-5, atol=1e-6)
    assert int((probs[1] > 0).sum()) == 3 and 0 < int((probs[2] > 0).sum()) < V
    alone = sampler.prepare([_req(rows[0])], V, torch.device("cpu"))
    assert not alone.any_truncation and not alone.any_typical


def test_repetition_penalty_equals_transformers_and_greedy_rows_stay_greedy() -> None:
    torch.manual_seed(4)
    logits = torch.randn(2, V) * 2
    history = [3, 8, 8, 21]
    reqs = [_req(SamplingParams(max_new_tokens=1, repetition_penalty=1.7), history=history),
            _req(SamplingParams(max_new_tokens=1, do_sample=True, temperature=0.5), seed=5)]
    tensors = sampler.prepare(reqs, V, torch.device("cpu"))
    ours = sampler._apply_penalties(logits, tensors)
    theirs = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([history]), logits[:1].clone())
    torch.testing.assert_close(ours[:1], theirs)
    assert int(sampler.sample(logits, tensors).token_ids[0]) == int(theirs.argmax())


def test_seeds_beyond_int64_wrap_to_their_64_bits() -> None:
    logits = torch.randn(1, V)
    params = SamplingParams(max_new_tokens=1, do_sample=True)
    for step in range(5):
        big = _sample(logits, [_req(params, seed=2**64 - 1, generated=step)]).token_ids
        assert big.tolist() == _sample(logits, [_req(params, seed=-1, generated=step)]).token_ids.tolist()


@pytest.mark.parametrize("do_sample", [False, True])
def test_min_tokens_holds_eos_back_until_reached(do_sample: bool) -> None:
    eos = frozenset({7, 9})
    logits = torch.full((3, V), -5.0)
    logits[:, 7] = 20.0  # EOS is by far the likeliest token in every row
    params = SamplingParams(max_new_tokens=10, min_tokens=3, do_sample=do_sample, seed=1 if do_sample else None)
    reqs = [_req(params, generated=0), _req(params, generated=2), _req(params, generated=3)]
    result = sampler.sample(logits, sampler.prepare(reqs, V, torch.device("cpu"), eos))
    tokens = result.token_ids.tolist()
    assert tokens[0] not in eos and tokens[1] not in eos  # short of min_tokens
    assert tokens[2] == 7  # reached: EOS may win again
    assert result.logprobs[2] == pytest.approx(torch.log_softmax(logits[2], -1)[7].item())  # raw, as TGI reports
    # Without min_tokens nothing changes and nothing extra is uploaded.
    plain = sampler.prepare([_req(SamplingParams(max_new_tokens=10))], V, torch.device("cpu"), eos)
    assert plain.hold_eos is None and sampler.sample(logits[:1], plain).token_ids.tolist() == [7]
