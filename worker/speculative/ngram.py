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

Overlapped steps (worker/engine.py): a request scheduled while its previous step still runs ends
in tokens the engine assumed (drafts taken as accepted) and a PLACEHOLDER for the sample not yet
read. Only its first `known` tokens are indexed (the assumed ones may be rolled back); the lookup
runs over everything before the placeholder, predicts the placeholder's token, and drafts the k
tokens after that prediction. A wrong prediction only costs the drafts: they are verified.
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

    def propose(self, tokens: list[int], k: int, known: int | None = None) -> list[int]:
        """`k` tokens predicted to follow `tokens`, or none without a match. `known`: how many of
        `tokens` are the request's own (the rest assumed, ending in a PLACEHOLDER); all by default."""
        if k <= 0 or not tokens:
            return []
        if known is None:
            known = len(tokens) if tokens[-1] >= 0 else len(tokens) - 1
        self._update(tokens, known)
        if tokens[-1] >= 0:
            return self._lookup(tokens, len(tokens), k)
        # The last token is still being sampled: draft after the lookup's prediction of it.
        return self._lookup(tokens, len(tokens) - 1, k + 1)[1:]

    def _lookup(self, tokens: list[int], size: int, k: int) -> list[int]:
        """`k` tokens to follow tokens[:size] (no PLACEHOLDER among them), or none."""
        for n in range(min(self.max_n, size - 1), self.min_n - 1, -1):
            start = self._starts[n].get(tuple(tokens[size - n : size]))
            if start is not None:
                # At least one: an indexed n-gram has a successor among the known tokens.
                drafts = tokens[start + n : min(start + n + k, size)]
                period = len(drafts)
                drafts += [drafts[i % period] for i in range(period, k)]  # the lookup over its own drafts
                return drafts
        return []

    def _update(self, tokens: list[int], known: int) -> None:
        # An n-gram is indexed once its successor is known: those ending at index <= known - 2,
        # the new ones at `_indexed` or later. Length by length, starts ascending: the latest wins.
        end, indexed = known - 1, self._indexed
        if end <= indexed:
            return
        for n in range(self.min_n, self.max_n + 1):
            starts = self._starts[n]
            for start in range(max(indexed - n + 1, 0), end - n + 1):
                starts[tuple(tokens[start : start + n])] = start
        self._indexed = end
