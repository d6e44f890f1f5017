"""Verification on the device: what each sampling row of a verifying request is, and how many of
its drafts the samples accept.

Row t of a request that verifies drafts d_0..d_{k-1} computes the logits that follow its last
token and d_0..d_{t-1}. It is sampled exactly as a plain decode at that position would be: its
seeded noise at generation step g + t, min_tokens counted at g + t, and penalties over the
history with d_0..d_{t-1} appended. Draft d_t is accepted when row t's sample equals it, and the
run stops at the first that does not: the request keeps the samples of rows 0..m (m drafts
accepted), so the last kept token is always the model's own, as without speculation.
"""

from __future__ import annotations

import dataclasses

import torch

from worker.batch import ScheduledRequest
from worker.input_builder import upload
from worker.logits_layout import LogitsLayout

__all__ = ["sampling_rows", "accepted_counts", "leading_matches"]


def sampling_rows(requests: list[ScheduledRequest], layout: LogitsLayout) -> list[ScheduledRequest]:
    """Per sampling row, the request as the sampler must see it there (a verifying request's
    rows as the plain decodes at their positions; every other row is its request)."""
    rows = [requests[i] for i in layout.sample_batch_idx]
    for i, first, drafts in layout.verify_spans:
        req = requests[i]
        params = req.params
        penalised = params.has_penalties()  # the only stage that reads the token history
        # The generation step is read by seeded draws and min_tokens' EOS hold alone: a greedy row
        # past min_tokens, unpenalised, samples as its request (no copy per row: a host-bound step).
        if not (penalised or params.do_sample or req.num_generated < params.min_tokens):
            continue
        for t in range(1, len(drafts) + 1):
            history = req.all_token_ids + drafts[:t] if penalised else req.all_token_ids
            rows[first + t] = dataclasses.replace(req, num_generated=req.num_generated + t, all_token_ids=history)
    return rows


def leading_matches(samples: torch.Tensor, tokens: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """samples, tokens (V, w + 1) int64, each span's rows (its last token, then w drafts) -> (V,)
    int64, the drafts accepted: how many leading rows sampled the token after them. A verification
    CUDA graph computes it too (worker/cuda_graphs.py `run_head`), writing into `out`."""
    width = samples.shape[1] - 1
    matched = samples[:, :width] == tokens[:, 1:]  # (V, w) bool; its cumprod is int64
    return torch.sum(matched.cumprod(dim=1), dim=1, out=out)  # (V,)


def accepted_counts(token_ids: torch.Tensor, layout: LogitsLayout, device: torch.device,
                    input_ids: torch.Tensor | None = None) -> torch.Tensor:
    """token_ids (n,) int64: each sampling row's sample -> (V,) int64, the drafts each verifying
    request accepts: the leading rows of its span whose sample equals the draft after them.

    input_ids (T,) int64 on the device, the step's tokens: where every one of them is a row of a
    span of the same width (a verification step of a graph's shape: V requests, each its last
    token and w drafts), the drafts are read from them in place, with no upload and no gather
    (four launches instead of nine, a host-bound step's host time)."""
    n = token_ids.shape[0]
    spans = layout.verify_spans
    width = max(len(drafts) for _, _, drafts in spans)
    if input_ids is not None and input_ids.shape[0] == n == len(spans) * (width + 1) and all(
            len(drafts) == width for _, _, drafts in spans):
        return leading_matches(token_ids.view(len(spans), width + 1), input_ids.view(len(spans), width + 1))
    # One upload: each row's target draft, then the (V, width) sampling rows of each span's drafts
    # (padding points at row n, which never matches).
    index = []
    for _, first, drafts in spans:
        index += [first + t for t in range(len(drafts))] + [n] * (width - len(drafts))
    host = torch.tensor(layout.draft_targets() + index, dtype=torch.int64)
    uploaded = upload(host, device)
    targets, picks = uploaded[:n], uploaded[n:].view(len(spans), width)  # (n,), (V, width)
    matches = torch.cat([token_ids == targets, torch.zeros(1, dtype=torch.bool, device=device)])  # (n + 1,)
    return matches[picks].long().cumprod(dim=1).sum(dim=1)  # (V,)
