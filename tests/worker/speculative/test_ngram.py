"""N-gram prompt lookup: longest suffix first, most recent occurrence, always k drafts after a
match, incremental index."""

from __future__ import annotations

import random

from worker.batch import PLACEHOLDER
from worker.speculative.ngram import NgramIndex


def test_the_longest_matching_suffix_wins_over_a_more_recent_shorter_one() -> None:
    # Suffix (1, 2, 3) occurs at 0 (followed by 9 9); its shorter suffix (2, 3) occurs later (then 7).
    tokens = [1, 2, 3, 9, 9, 5, 2, 3, 7, 7, 1, 2, 3]
    assert NgramIndex(1, 4).propose(tokens, 2) == [9, 9]
    # With trigrams and longer ruled out, the bigram's latest occurrence speaks.
    assert NgramIndex(1, 2).propose(tokens, 2) == [7, 7]


def test_the_most_recent_occurrence_of_the_suffix_is_used() -> None:
    tokens = [4, 5, 1, 4, 5, 2, 4, 5, 3, 8, 4, 5]
    assert NgramIndex(2, 2).propose(tokens, 3) == [3, 8, 4]


def test_no_match_no_draft_and_a_match_always_gives_k() -> None:
    index = NgramIndex(2, 3)
    assert index.propose([1, 2, 3, 4], 4) == []  # the suffix (3, 4) never occurred before
    # What follows the match runs into the end: the lookup goes on over its own drafts.
    assert NgramIndex(1, 1).propose([6, 7, 6], 5) == [7, 6, 7, 6, 7]
    assert NgramIndex(1, 4).propose([5, 1, 2, 3, 1, 2], 4) == [3, 1, 2, 3]  # (1, 2) at 1, then period 3
    assert NgramIndex(1, 3).propose([6, 7, 6], 0) == []
    assert NgramIndex(1, 3).propose([6], 3) == []


def test_drafts_past_the_end_are_the_lookup_over_the_drafts_appended() -> None:
    rng = random.Random(3)
    for _ in range(200):
        tokens = [rng.randrange(4) for _ in range(rng.randrange(2, 12))]
        k = rng.randrange(1, 7)
        drafts = NgramIndex(1, 4).propose(tokens, k)
        if not drafts:
            continue
        assert len(drafts) == k
        # The continuation starts where the matched suffix's occurrence ended: draft i is token
        # `after + i` of the tokens with the drafts appended.
        after = next(s + n for n in range(min(4, len(tokens) - 1), 0, -1)
                     for s in range(len(tokens) - n - 1, -1, -1) if tokens[s : s + n] == tokens[-n:])
        extended = tokens + drafts
        assert drafts == [extended[after + i] for i in range(k)]


def test_a_placeholder_end_drafts_after_the_lookups_prediction_of_it() -> None:
    # [1, 2, 1] predicts 2 for the placeholder, then 1, 2: the drafts follow the prediction.
    assert NgramIndex(1, 3).propose([1, 2, 1, PLACEHOLDER], 2) == [1, 2]
    assert NgramIndex(2, 3).propose([5, 6, PLACEHOLDER], 2) == []  # nothing to predict it from


def test_assumed_tokens_are_looked_up_but_never_indexed() -> None:
    # [3, 4] is assumed (drafts taken as accepted, then the placeholder): the suffix (1, 3, 4)
    # finds its earlier occurrence, but no n-gram over the assumed tokens enters the index, so a
    # rollback (the drafts rejected: the list cut back and regrown) leaves the index true.
    tokens = [1, 3, 4, 8, 9, 1, 3, 4, PLACEHOLDER]
    index = NgramIndex(1, 3)
    assert index.propose(tokens, 2, known=6) == [9, 1]  # predicts 8, then drafts 9, 1
    del tokens[6:]
    tokens += [5, 1]  # what was really sampled
    fresh = NgramIndex(1, 3)
    assert index.propose(tokens, 3) == fresh.propose(tokens, 3) == [5, 1, 5]


def test_the_incremental_index_agrees_with_a_fresh_one_and_a_brute_force_search() -> None:
    rng = random.Random(7)
    tokens: list[int] = []
    grown = NgramIndex(1, 4)
    for _ in range(300):
        tokens += [rng.randrange(6) for _ in range(rng.randrange(1, 4))]  # several tokens a step, as accepted runs
        want = _brute_force(tokens, 3, 1, 4)
        assert grown.propose(tokens, 3) == want
        assert NgramIndex(1, 4).propose(tokens, 3) == want


def _brute_force(tokens: list[int], k: int, min_n: int, max_n: int) -> list[int]:
    for n in range(min(max_n, len(tokens) - 1), min_n - 1, -1):
        suffix = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == suffix:
                drafts = tokens[start + n : start + n + k]
                while len(drafts) < k:  # past the end: over the drafts appended
                    drafts.append((tokens + drafts)[start + n + len(drafts)])
                return drafts
    return []
