"""Where a step's logits and results sit: which hidden-state rows become logits, which of those
each sampling request reads, which score prompt tokens, and the layout of the one buffer of
results the step copies back to the host.

worker/input_builder.py builds the layout while it lays out the step's tokens; the model runner
packs its results by it (`pack`, on the device) and reads them back by it (`unpack`, on the host),
so the offsets are written once, here.

A request verifying drafts (speculative decoding) samples every one of its rows: it has one
sampling row per token it computes, and a span saying where they are and how many drafts they
check (`add_verified`); its results add the number of drafts accepted. A request whose
speculator heads propose the next step's drafts (`add_proposer`) adds those drafts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from worker.request import RequestKey

__all__ = ["LogitsLayout", "Results"]


@dataclass(slots=True)
class Results:
    """A step's results on the host, each a slice of the packed buffer."""

    token_ids: list[float]  # (n,): the sampled id of each sampling row (exact in float64)
    logprobs: list[float]  # (n,)
    top_ids: list[float]  # (n * top_n,): row-major, top_n per sampling row
    top_logprobs: list[float]  # (n * top_n,)
    prompt_logprobs: list[float]  # (P,): one per prompt_rows entry
    num_accepted: list[float]  # (V,): drafts accepted, one per verify_spans entry
    proposals: list[float]  # (R * num_proposed,): row-major, the heads' drafts per proposers entry


@dataclass(slots=True)
class LogitsLayout:
    rows: list[int] = field(default_factory=list)  # hidden-state rows turned into logits, in order (N,)
    # Per sampling row (n,): its request's batch index (repeated for a verifying request's rows)
    # and its row in the logits.
    sample_batch_idx: list[int] = field(default_factory=list)
    sample_rows: list[int] = field(default_factory=list)
    prompt_rows: list[int] = field(default_factory=list)  # logits rows that score a prompt token (P,)
    prompt_targets: list[int] = field(default_factory=list)  # the token each of those rows predicts (P,)
    # Per request asking for prompt logprobs: its slice of prompt_rows.
    prompt_spans: dict[RequestKey, tuple[int, int]] = field(default_factory=dict)
    # Per verifying request (V,): (batch index, its first sampling row, the drafts it checks).
    verify_spans: list[tuple[int, int, list[int]]] = field(default_factory=list)
    # Per request whose heads propose drafts (R,): (batch index, its first sampling row, its
    # verify_spans index or -1). The heads read the row of its last kept token: the first, plus
    # the drafts accepted when it verifies.
    proposers: list[tuple[int, int, int]] = field(default_factory=list)
    num_proposed: int = 0  # drafts per proposer

    def add_sampled(self, batch_idx: int, row: int) -> None:
        """A request whose only logits row is `row` (of the hidden states), and which samples."""
        self.rows.append(row)
        self.sample_batch_idx.append(batch_idx)
        self.sample_rows.append(len(self.rows) - 1)

    def add_verified(self, batch_idx: int, first_row: int, drafts: list[int]) -> None:
        """A decode whose rows from `first_row` are its last token and then `drafts`: each samples."""
        rows = len(drafts) + 1
        self.verify_spans.append((batch_idx, len(self.sample_rows), drafts))
        self.sample_rows.extend(range(len(self.rows), len(self.rows) + rows))  # what add_sampled does, per row
        self.rows.extend(range(first_row, first_row + rows))
        self.sample_batch_idx.extend([batch_idx] * rows)

    def add_proposer(self, batch_idx: int, first_sample_row: int, verifies: bool, num_proposed: int) -> None:
        """The request just added also has the heads propose `num_proposed` drafts."""
        assert self.num_proposed in (0, num_proposed), "one draft count per step"
        self.num_proposed = num_proposed
        self.proposers.append((batch_idx, first_sample_row, len(self.verify_spans) - 1 if verifies else -1))

    def draft_targets(self) -> list[int]:
        """Per sampling row (n,): the draft its sample must equal for the next row's sample to be
        kept; -1 where no draft follows."""
        targets = [-1] * len(self.sample_rows)
        for _, first, drafts in self.verify_spans:
            targets[first : first + len(drafts)] = drafts
        return targets

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
             prompt_logprobs: torch.Tensor | None, num_accepted: torch.Tensor | None = None,
             proposals: torch.Tensor | None = None) -> torch.Tensor | None:
        """Every result in one float64 buffer, in Results' order (one copy back); None when empty.

        A part that is None must be empty by the layout; `top_n` is the top alternatives per
        sampling request, as `unpack` will be told.
        """
        parts = []
        results = (token_ids, logprobs, top_ids, top_logprobs, prompt_logprobs, num_accepted, proposals)
        for part, size in zip(results, self._sizes(top_n), strict=True):
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

    def _sizes(self, top_n: int) -> tuple[int, ...]:
        n = len(self.sample_batch_idx)
        proposed = len(self.proposers) * self.num_proposed
        return n, n, n * top_n, n * top_n, len(self.prompt_rows), len(self.verify_spans), proposed
