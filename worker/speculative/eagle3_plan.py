"""Where an EAGLE-3 draft step reads its inputs: host bookkeeping, built with the step's inputs and
uploaded in one copy (worker/speculative/eagle3.py runs it).

The draft's row for position p takes the token at p + 1 and the target's hidden state at p. For
a step's tokens that is the next token of the same request, except at its last row: there it is
the token the step samples (a prompt that is still being prefilled: its next prompt token,
known here). A request verifying drafts d_1..d_k computed its last token and the drafts at k + 1
rows; row j of those takes the sample of its verification row j, which is d_{j+1} where the draft
was accepted and the model's own token at the first rejection, so the rows up to the last kept
token are right whatever the acceptance, and the later ones are rewritten by the next step.

Each proposer (a request whose drafts the draft model proposes for the next step) then chains
from the row of its last kept token: its last row, or for a verifying request its first row
plus the drafts accepted (known on the device only). The chain writes draft KV at the positions
after it, which may lie past the blocks the request holds: those go to scratch blocks of the
draft's own pool (`scratch_base + p * scratch_per + j`), never to another request's blocks; the
next step's extension rewrites every one of those positions before anything reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.batch import ScheduledBatch
from worker.logits_layout import LogitsLayout

__all__ = ["DraftPlan", "plan_draft", "scratch_blocks_per_proposer"]


@dataclass(slots=True)
class DraftPlan:
    flat: torch.Tensor  # (T + K + 2R + R*W,) int64 host: src, known, rows, spans, tables
    num_tokens: int  # T: the step's token rows
    num_known: int  # K: next tokens known on the host (prompt chunks that do not sample)
    num_proposers: int  # R
    table_width: int  # W: blocks per chain block table


def scratch_blocks_per_proposer(num_drafts: int, block_size: int) -> int:
    # A chain writes num_drafts - 1 positions after the last kept token, starting anywhere in a block.
    return -(-max(0, num_drafts - 1) // block_size) + 1


def plan_draft(batch: ScheduledBatch, layout: LogitsLayout, block_size: int, num_drafts: int,
               scratch_base: int) -> DraftPlan:
    """The draft's inputs for `batch`: indices into the pool [input_ids (T), samples (n), known (K)]."""
    num_tokens = sum(len(r.token_ids) for r in batch.requests)
    num_samples = len(layout.sample_rows)
    sample_of: dict[int, int] = {}  # batch index -> its first sampling row
    for row, i in enumerate(layout.sample_batch_idx):
        sample_of.setdefault(i, row)
    src: list[int] = []
    known: list[int] = []
    starts: list[int] = []
    at = 0
    for i, req in enumerate(batch.requests):
        n = len(req.token_ids)
        starts.append(at)
        if req.num_draft_tokens:  # every row takes its verification row's sample
            src.extend(num_tokens + sample_of[i] + j for j in range(n))
        else:
            src.extend(range(at + 1, at + n))  # the next token of the same request
            if req.do_sample:
                src.append(num_tokens + sample_of[i])
            else:
                src.append(num_tokens + num_samples + len(known))
                known.append(req.all_token_ids[req.start_pos + n])
        at += n
    per = scratch_blocks_per_proposer(num_drafts, block_size)
    rows: list[int] = []
    spans: list[int] = []
    tables: list[list[int]] = []
    for p, (i, _, span) in enumerate(layout.proposers):
        req = batch.requests[i]
        n = len(req.token_ids)
        rows.append(starts[i] + (0 if span >= 0 else n - 1))
        spans.append(span)
        # The chain's last position is at most the step's last one plus num_drafts - 1.
        need = (req.start_pos + n - 1 + num_drafts - 1) // block_size + 1
        own = req.block_table[:need]
        tables.append(own + [scratch_base + p * per + j for j in range(need - len(own))])
    width = max((len(t) for t in tables), default=0)
    padded = [x for t in tables for x in t + [scratch_base] * (width - len(t))]
    flat = torch.tensor(src + known + rows + spans + padded, dtype=torch.int64)
    return DraftPlan(flat, num_tokens, len(known), len(rows), width)
