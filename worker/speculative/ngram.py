"""N-gram prompt lookup: the tokens that followed the most recent earlier occurrence of the longest
suffix of a request's tokens (prompt and output so far), from `max_n` tokens down to `min_n`.

TGI matches only the last token, at its first occurrence in the prompt; a longer, more recent
match predicts better (vLLM's prompt lookup takes the longest; recency favours the part of the
text being repeated or edited now). An index per n-gram length maps each n-gram that has a
successor to its latest start, updated with each new token, so a proposal costs a few dict
lookups however long the request is. Plain Python, no torch.

A match always yields k tokens. When what follows it runs into the end of the tokens (the match
is recent: the text is repeating with a short period), the lookup goes on over its own drafts, as
if they had been appended: the continuation repeats with that period. So every request with a
match verifies the same number of drafts, the shape of the step's verification CUDA graph
(worker/cuda_graphs.py); a draft's source does not matter to verification, which stays lossless.
"""

from __future__ import annotations

__all__ = ["NgramIndex"]


class NgramIndex:
    """The latest start of every n-gram (min_n <= n <= max_n) of one request's tokens that is
    followed by at least one more token."""

    __slots__ = ("min_n", "max_n", "_starts", "_indexed")

    def __init__(self, min_n: int, max_n: int) -> None:
        assert 1 <= min_n <= max_n, (min_n, max_n)
        self.min_n, self.max_n = min_n, max_n
        self._starts: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_n + 1)]  # by n
        self._indexed = 0  # n-grams ending before token `_indexed` are in the index

    def propose(self, tokens: list[int], k: int) -> list[int]:
        """`k` tokens predicted to follow `tokens`, or none without a match."""
        if k <= 0 or not tokens or tokens[-1] < 0:  # a PLACEHOLDER end: the last token is not known yet
            return []
        self._update(tokens)
        size = len(tokens)
        for n in range(min(self.max_n, size - 1), self.min_n - 1, -1):
            start = self._starts[n].get(tuple(tokens[size - n :]))
            if start is not None:
                drafts = tokens[start + n : start + n + k]  # at least one: an indexed n-gram has a successor
                period = len(drafts)
                drafts += [drafts[i % period] for i in range(period, k)]  # the lookup over its own drafts
                return drafts
        return []

    def _update(self, tokens: list[int]) -> None:
        # An n-gram is indexed once its successor exists: those ending at index <= len - 2.
        end = len(tokens) - 1
        for last in range(self._indexed, end):  # `last`: the n-gram's last index
            for n in range(self.min_n, min(self.max_n, last + 1) + 1):
                self._starts[n][tuple(tokens[last - n + 1 : last + 1])] = last - n + 1
        self._indexed = max(self._indexed, end)
