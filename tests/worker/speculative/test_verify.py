"""Verification is rejection sampling with the draft as a one-hot proposal: with and without
speculation the first two tokens of 2,000 seeded draws (temperature 1) are the same token for
token, and both follow the model's distribution (chi-square, p > 0.01). The sampler directly, on
a table of logits: fast, and exact about which distribution each row samples."""

from __future__ import annotations

import time

import torch

from common.sampling_params import SamplingParams
from worker import sampler
from worker.batch import ScheduledRequest
from worker.logits_layout import LogitsLayout
from worker.request import RequestKey
from worker.speculative.verify import accepted_counts, sampling_rows

V = 8
DRAWS = 2000
P0 = torch.tensor([0.4, 0.2, 0.1, 0.1, 0.08, 0.06, 0.04, 0.02])  # the first token's distribution
P1 = torch.softmax(torch.randn(V, V, generator=torch.Generator().manual_seed(5)) * 0.7, dim=-1)  # (x, y): p(y | x)
DRAFT = 0  # the draft after the last token: the likeliest, so both branches are common
CPU = torch.device("cpu")


def _request(seed: int, draft: list[int], generated: int = 3, params: SamplingParams | None = None) -> ScheduledRequest:
    params = params or SamplingParams(max_new_tokens=8, do_sample=True, temperature=1.0)
    history = [5, 6, 7]
    return ScheduledRequest(RequestKey(f"s{seed}", 0), [history[-1], *draft], len(history) - 1, [0], True, params,
                            all_token_ids=history, num_generated=generated, seed=seed, num_draft_tokens=len(draft))


def _sample(rows: list[ScheduledRequest], logits: torch.Tensor) -> torch.Tensor:
    return sampler.sample(logits, sampler.prepare(rows, V, CPU)).token_ids


def _chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    stat = ((counts - expected) ** 2 / expected).sum()
    return float(torch.special.gammaincc(torch.tensor((len(probs) - 1) / 2), stat / 2))


def test_first_two_tokens_are_unchanged_and_follow_the_model() -> None:
    started = time.monotonic()
    seeds = range(DRAWS)
    # With speculation: rows (last token, draft) of every draw in one step.
    requests = [_request(s, [DRAFT]) for s in seeds]
    layout = LogitsLayout()
    for i in range(DRAWS):
        layout.add_verified(i, 2 * i, [DRAFT])
    logits = torch.stack([P0.log(), P1[DRAFT].log()]).repeat(DRAWS, 1)  # (2 * DRAWS, V)
    sampled = _sample(sampling_rows(requests, layout), logits).view(DRAWS, 2)
    accepted = accepted_counts(sampled.flatten(), layout, CPU)
    first = sampled[:, 0]
    # A rejected draft: the next step decodes after the first token as a plain step would.
    after = [_request(s, [], generated=4) for s in seeds]
    plain_second = _sample(after, P1[first].log())
    second = torch.where(accepted.bool(), sampled[:, 1], plain_second)
    # Without speculation: two plain steps.
    alone = _sample([_request(s, []) for s in seeds], P0.log().expand(DRAWS, V))
    alone_second = _sample(after, P1[alone].log())
    assert torch.equal(first, alone) and torch.equal(second, alone_second)
    assert torch.equal(accepted.bool(), first == DRAFT)
    first_counts = torch.bincount(first, minlength=V).double()
    second_counts = torch.bincount(second, minlength=V).double()
    assert _chi_square_p(first_counts, P0.double()) > 0.01
    assert _chi_square_p(second_counts, (P0 @ P1).double()) > 0.01
    assert 0.35 < float(accepted.double().mean()) < 0.45  # p0(draft) = 0.4
    assert time.monotonic() - started < 30


def test_each_row_samples_as_the_plain_decode_at_its_position() -> None:
    params = SamplingParams(max_new_tokens=8, do_sample=True, repetition_penalty=1.3, min_tokens=5)
    req = _request(9, [4, 2, 3], generated=3, params=params)
    layout = LogitsLayout()
    layout.add_verified(0, 0, [4, 2, 3])
    rows = sampling_rows([req], layout)
    assert [r.num_generated for r in rows] == [3, 4, 5, 6]
    assert [r.all_token_ids for r in rows] == [[5, 6, 7], [5, 6, 7, 4], [5, 6, 7, 4, 2], [5, 6, 7, 4, 2, 3]]
    assert layout.draft_targets() == [4, 2, 3, -1]
    # Acceptance stops at the first sample that is not the draft.
    assert accepted_counts(torch.tensor([4, 2, 9, 1]), layout, CPU).tolist() == [2]
    assert accepted_counts(torch.tensor([4, 2, 3, 1]), layout, CPU).tolist() == [3]
    assert accepted_counts(torch.tensor([0, 2, 3, 1]), layout, CPU).tolist() == [0]


def test_drafts_read_from_the_steps_tokens_count_as_the_uploaded_ones() -> None:
    # A verification step of a graph's shape (every token a row of a span of one width) reads the
    # drafts from its input tokens; any other step uploads them. Both count alike.
    gen = torch.Generator().manual_seed(2)
    for width, num in ((1, 1), (3, 2), (4, 5)):
        layout = LogitsLayout()
        inputs = []
        for i in range(num):
            drafts = torch.randint(0, 3, (width,), generator=gen).tolist()
            layout.add_verified(i, i * (width + 1), drafts)
            inputs += [7, *drafts]
        for _ in range(20):
            samples = torch.randint(0, 3, (num * (width + 1),), generator=gen)
            read = accepted_counts(samples, layout, CPU, torch.tensor(inputs))
            assert torch.equal(read, accepted_counts(samples, layout, CPU))
    # A step with one more token (a prompt chunk beside) uploads: the views would not line up.
    layout = LogitsLayout()
    layout.add_verified(0, 0, [4, 2])
    assert accepted_counts(torch.tensor([4, 9, 1]), layout, CPU, torch.tensor([3, 4, 2, 8])).tolist() == [1]
