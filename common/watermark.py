"""The watermark's green lists and its detector (Kirchenbauer et al., arXiv 2301.10226), in plain Python.

Each step of a watermarked request adds `delta` to the logits of the tokens on the green list of
the previous token, so a watermarked text holds more green tokens than chance; the detector
counts them. The green list is a function of the previous token alone (the paper's context width
1, as TGI's), and membership is one 64-bit hash:

    green(prev, token)  <=>  top32(mix(mix(KEY + prev * GOLDEN) + token * GOLDEN)) < floor(gamma * 2**32)

with `mix` the splitmix64 finaliser (common/splitmix.py) and KEY TGI's hashing key (15485863).
Each token is green with probability gamma independently of the others, which is the null model
the z-test assumes.

This is deliberately *not* TGI's green list (torch.randperm(V) from a generator seeded
with KEY * prev on the logits' device). randperm's permutation differs between CPU and CUDA and is
no stable contract across torch versions, so a detector would need torch on the worker's kind of
device; the gateway has no torch. This hash gives the same bits on CPU, on CUDA and here, costs a
few integer tensor ops over the whole batch (no per-row generator, no host read of the previous
token, so overlapped steps keep running ahead), and lets every process score a text. A text
watermarked by TGI is therefore not detected here, nor ours by transformers' WatermarkDetector.
The green list holds gamma*V tokens on average instead of exactly int(gamma*V).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from common.splitmix import GOLDEN, mix

__all__ = ["KEY", "DEFAULT_Z_THRESHOLD", "green_threshold", "is_green", "WatermarkScore", "score"]

KEY = 15485863  # TGI's (and the paper's) hashing key
DEFAULT_Z_THRESHOLD = 4.0  # the paper's: about 3e-5 false positives


def green_threshold(gamma: float) -> int:
    """A token is green when the top 32 bits of its hash are below this."""
    return int(gamma * (1 << 32))


def is_green(prev: int, token: int, threshold: int) -> bool:
    row = mix(KEY + prev * GOLDEN)
    return mix(row + token * GOLDEN) >> 32 < threshold


class WatermarkScore(msgspec.Struct, frozen=True):
    z_score: float  # (green - gamma*T) / sqrt(T*gamma*(1-gamma)); 0.0 when nothing was scored
    p_value: float  # one-sided: the chance of this many green tokens in unwatermarked text
    num_tokens_scored: int  # T: distinct (previous, token) bigrams after the first token
    green_fraction: float  # green / T
    watermarked: bool  # z_score > the threshold asked for


def score(token_ids: Sequence[int], gamma: float, z_threshold: float) -> WatermarkScore:
    """Score each token after the first against its predecessor's green list.

    A repeated bigram is counted once (the paper's `ignore_repeated_bigrams`): repetition, which
    low-entropy text is full of, would otherwise count the same coin flip many times.
    """
    threshold = green_threshold(gamma)
    bigrams = set(zip(token_ids, token_ids[1:]))
    num = len(bigrams)
    if num == 0:
        return WatermarkScore(0.0, 1.0, 0, 0.0, False)
    green = sum(is_green(prev, tok, threshold) for prev, tok in bigrams)
    z = (green - gamma * num) / math.sqrt(num * gamma * (1 - gamma))
    p = 0.5 * math.erfc(z / math.sqrt(2))
    return WatermarkScore(z, p, num, green / num, z > z_threshold)
