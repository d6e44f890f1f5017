"""Where a step's logits and results sit: which hidden-state rows become logits, which of those
each sampling request reads, which score prompt tokens, and the layout of the one buffer of
results the step copies back to the host.

worker/input_builder.py builds the layout while it lays out the step's tokens; the model runner
packs its results by it (`pack`, on the device) and reads them back by it (`unpack`, on the host),
so the offsets are written once, here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from worker.request import RequestKey

__all__ = ["LogitsLayout", "Results"]


@dataclass(slots=True)
class Results:
    """A step's results on the host, each a slice of the packed buffer."""

    token_ids: list[float]  # (n,): the sampled id of each sampling request (exact in float64)
    logprobs: list[float]  # (n,)
    top_ids: list[float]  # (n * top_n,): row-major, top_n per sampling request
    top_logprobs: list[float]  # (n * top_n,)
    prompt_logprobs: list[float]  # (P,): one per prompt_rows entry


@dataclass(slots=True)
class LogitsLayout:
    rows: list[int] = field(default_factory=list)  # hidden-state rows turned into logits, in order (N,)
    sample_batch_idx: list[int] = field(default_factory=list)  # batch index of each sampling request (n,)
    sample_rows: list[int] = field(default_factory=list)  # its last token's row in the logits (n,)
    prompt_rows: list[int] = field(default_factory=list)  # logits rows that score a prompt token (P,)
    prompt_targets: list[int] = field(default_factory=list)  # the token each of those rows predicts (P,)
    # Per request asking for prompt logprobs: its slice of prompt_rows.
    prompt_spans: dict[RequestKey, tuple[int, int]] = field(default_factory=dict)

    def add_sampled(self, batch_idx: int, row: int) -> None:
        """A request whose only logits row is `row` (of the hidden states), and which samples."""
        self.rows.append(row)
        self.sample_batch_idx.append(batch_idx)
        self.sample_rows.append(len(self.rows) - 1)

    def add_prompt_scored(self, key: RequestKey, batch_idx: int, first_row: int, targets: list[int],
                          num_rows: int, do_sample: bool) -> None:
        """A request whose `num_rows` rows from `first_row` all become logits: each scores the
        next prompt token where one is known (`targets`), and the last samples if `do_sample`."""
        base = len(self.rows)
        self.rows.extend(range(first_row, first_row + num_rows))
        self.prompt_spans[key] = (len(self.prompt_rows), len(self.prompt_rows) + len(targets))
        self.prompt_rows.extend(range(base, base + len(targets)))
        self.prompt_targets.extend(targets)
        if do_sample:
            self.sample_batch_idx.append(batch_idx)
            self.sample_rows.append(base + num_rows - 1)

    def pack(self, top_n: int, token_ids: torch.Tensor | None, logprobs: torch.Tensor | None,
             top_ids: torch.Tensor | None, top_logprobs: torch.Tensor | None,
             prompt_logprobs: torch.Tensor | None) -> torch.Tensor | None:
        """Every result in one float64 buffer, in Results' order (one copy back); None when empty.

        A part that is None must be empty by the layout; `top_n` is the top alternatives per
        sampling request, as `unpack` will be told.
        """
        parts = []
        for part, size in zip((token_ids, logprobs, top_ids, top_logprobs, prompt_logprobs), self._sizes(top_n)):
            if part is None:
                assert size == 0, "a result the layout counts on is missing"
                continue
            assert part.numel() == size, (part.shape, size)
            parts.append(part.flatten().double())
        return torch.cat(parts) if parts else None

    def unpack(self, host: list[float], top_n: int) -> Results:
        sliced, at = [], 0
        for size in self._sizes(top_n):
            sliced.append(host[at : at + size])
            at += size
        return Results(*sliced)

    def _sizes(self, top_n: int) -> tuple[int, int, int, int, int]:
        n = len(self.sample_batch_idx)
        return n, n, n * top_n, n * top_n, len(self.prompt_rows)
