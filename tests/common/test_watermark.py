"""The watermark's hash and detector in plain Python: known answers, the z-test, repeated bigrams."""

from __future__ import annotations

import math
import random

from common import splitmix
from common import watermark as wm


def test_mix_is_splitmix64() -> None:
    # splitmix64 seeded with 0 yields 0xE220A8397B1DCDAF, then 0x6E789E6AA1B965F4 (its reference outputs).
    assert splitmix.mix(splitmix.GOLDEN) == 0xE220A8397B1DCDAF
    assert splitmix.mix(2 * splitmix.GOLDEN) == 0x6E789E6AA1B965F4
    assert splitmix.as_int64(2**64 - 1) == -1 and splitmix.as_int64(2**63) == -(2**63)


def test_green_lists_hold_gamma_of_the_vocabulary_and_differ_per_token() -> None:
    for gamma in (0.25, 0.5):
        threshold = wm.green_threshold(gamma)
        lists = [{t for t in range(4000) if wm.is_green(prev, t, threshold)} for prev in (0, 1, 2)]
        for green in lists:
            assert abs(len(green) / 4000 - gamma) < 0.03
        assert len(lists[0] & lists[1]) / 4000 < gamma * gamma + 0.03  # independent lists


def _all_green(n: int, gamma: float) -> list[int]:
    """A text that always picks a green next token (what a huge delta would generate)."""
    threshold = wm.green_threshold(gamma)
    ids = [7]
    rng = random.Random(n)
    while len(ids) < n:
        tok = rng.randrange(49152)
        if wm.is_green(ids[-1], tok, threshold):
            ids.append(tok)
    return ids


def test_an_all_green_text_scores_sqrt_t() -> None:
    result = wm.score(_all_green(101, 0.5), 0.5, 4.0)
    assert result.num_tokens_scored == 100 and result.green_fraction == 1.0
    assert math.isclose(result.z_score, 10.0) and result.watermarked
    assert result.p_value < 1e-20
    assert not wm.score(_all_green(101, 0.5), 0.5, z_threshold=11.0).watermarked


def test_random_text_scores_near_zero() -> None:
    rng = random.Random(3)
    zs = [wm.score([rng.randrange(49152) for _ in range(300)], 0.5, 4.0).z_score for _ in range(50)]
    assert max(abs(z) for z in zs) < 4.0
    assert abs(sum(zs) / len(zs)) < 0.6  # mean of 50 standard normals: sd 0.14


def test_repeated_bigrams_count_once_and_short_texts_score_nothing() -> None:
    text = _all_green(6, 0.5)
    assert wm.score(text * 20, 0.5, 4.0).num_tokens_scored == 6  # 5 bigrams + the wrap-around one
    for short in ([], [5]):
        result = wm.score(short, 0.5, 4.0)
        assert result.num_tokens_scored == 0 and result.z_score == 0.0 and not result.watermarked
