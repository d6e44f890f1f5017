"""Sampling for the whole batch at once: `prepare(requests)` then `sample(logits, tensors)`.

The stages, each a no-op for rows that do not use it: penalties, min_tokens' EOS hold, the
grammar mask (worker/grammar_mask.py; a constrained row's EOS is the grammar's to allow), the
watermark bias (worker/watermark.py); then greedy rows take the argmax and sampling rows go through
temperature, top-k, top-p and typical-p, then an exponential race: argmax(p / E) with E ~ Exp(1) picks token i with
probability p_i. E comes from a counter-based hash of (seed, step, token id) computed with integer
tensor ops, so a request's draws depend only on its own seed and step: the same seed and prompt
give the same text whatever else shares the batch, with no per-request generator and no sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.splitmix import as_int64
from worker import grammar_mask, hash_ops
from worker.batch import ScheduledRequest
from worker.input_builder import host_tensor, upload
from worker.watermark import Watermark

__all__ = ["SamplingTensors", "SampleResult", "prepare", "sample", "greedy_only"]

_MASK = float("-inf")


@dataclass(slots=True)
class SamplingTensors:
    all_greedy: bool  # host flag: take the argmax fast path
    do_sample: torch.Tensor  # (B,) bool
    temperature: torch.Tensor  # (B, 1) float32
    top_k: torch.Tensor  # (B,) int64, vocab size when off
    top_p: torch.Tensor  # (B, 1) float32
    typical_p: torch.Tensor  # (B, 1) float32
    any_truncation: bool  # host: some sampling row uses top-k, top-p or typical-p (else no sort)
    any_typical: bool  # host: some sampling row uses typical-p
    seeds: torch.Tensor  # (B,) int64
    steps: torch.Tensor  # (B,) int64: tokens generated so far
    any_penalty: bool  # host flag
    repetition_penalty: torch.Tensor  # (B, 1)
    frequency_penalty: torch.Tensor  # (B, 1)
    presence_penalty: torch.Tensor  # (B, 1)
    history: torch.Tensor | None  # (B, L) int64, padded with -1: tokens seen (for penalties)
    max_top_n: int  # host: largest top_n_tokens asked for
    eos_ids: torch.Tensor | None = None  # (E,) int64: the model's EOS ids, when some row holds them back
    hold_eos: torch.Tensor | None = None  # (B, 1) bool: rows short of min_tokens, whose EOS is not sampled
    watermark: Watermark | None = None  # host: the fleet's gamma and delta; None when no row watermarks
    watermark_rows: torch.Tensor | None = None  # (W,) int64: the rows that watermark
    grammar: grammar_mask.GrammarMask | None = None  # the constrained rows' allowed tokens; None = no row


@dataclass(slots=True)
class SampleResult:
    token_ids: torch.Tensor  # (B,) int64
    logprobs: torch.Tensor  # (B,) float32: logprob of the chosen token under the raw distribution
    top_ids: torch.Tensor | None  # (B, max_top_n) int64
    top_logprobs: torch.Tensor | None  # (B, max_top_n) float32


def prepare(requests: list[ScheduledRequest], vocab_size: int, device: torch.device,
            eos_token_ids: frozenset[int] = frozenset(), watermark: Watermark | None = None) -> SamplingTensors:
    ps = [r.params for r in requests]
    b = len(requests)
    any_penalty = any(p.has_penalties() for p in ps)
    marked = [j for j, p in enumerate(ps) if p.watermark]
    if marked and watermark is None:
        raise ValueError("a request asks for a watermark, but no gamma/delta were given")
    # Two uploads: every float knob in one tensor, every integer (and the penalty history) in another.
    floats = [p.temperature if p.do_sample else 1.0 for p in ps] + [p.top_p for p in ps]
    floats += [p.typical_p for p in ps] + [p.repetition_penalty for p in ps]
    floats += [p.frequency_penalty for p in ps] + [p.presence_penalty for p in ps]
    ints = [int(p.do_sample) for p in ps] + [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in ps]
    # Seeds arrive as any integer (TGI takes u64); the hash works on their 64 bits.
    ints += [as_int64(r.seed) for r in requests] + [r.num_generated for r in requests]
    ints += marked
    longest = max((len(r.all_token_ids) for r in requests), default=0) if any_penalty else 0
    for r in requests if any_penalty else ():
        ints += r.all_token_ids
        ints += [-1] * (longest - len(r.all_token_ids))
    f = upload(host_tensor(floats, torch.float32), device).view(6, b, 1)  # (6, B, 1)
    i = upload(host_tensor(ints), device)
    hold = [r.num_generated < r.params.min_tokens and r.grammar is None for r in requests]
    eos_ids = hold_eos = None
    if eos_token_ids and any(hold):  # a third upload only in steps that need it
        held = upload(host_tensor(sorted(eos_token_ids) + hold), device)
        eos_ids, hold_eos = held[: len(eos_token_ids)], held[len(eos_token_ids) :].bool().view(b, 1)
    sampling = [p for p in ps if p.do_sample]
    return SamplingTensors(
        all_greedy=not sampling,
        do_sample=i[:b].bool(),
        temperature=f[0],
        top_k=i[b : 2 * b],
        top_p=f[1],
        typical_p=f[2],
        any_truncation=any(0 < p.top_k < vocab_size or p.top_p < 1.0 or p.typical_p < 1.0 for p in sampling),
        any_typical=any(p.typical_p < 1.0 for p in sampling),
        seeds=i[2 * b : 3 * b],
        steps=i[3 * b : 4 * b],
        any_penalty=any_penalty,
        repetition_penalty=f[3],
        frequency_penalty=f[4],
        presence_penalty=f[5],
        history=i[4 * b + len(marked) :].view(b, longest) if any_penalty else None,
        max_top_n=max((p.top_n_tokens for p in ps), default=0),
        eos_ids=eos_ids,
        hold_eos=hold_eos,
        watermark=watermark if marked else None,
        watermark_rows=i[4 * b : 4 * b + len(marked)] if marked else None,
    )


def greedy_only(t: SamplingTensors) -> bool:
    """Whether `sample` of these rows is each row's argmax and its raw logprob alone: every row
    greedy, no stage that changes the logits (penalties, an EOS hold, grammar masks, the watermark)
    and no alternatives asked for. A decode CUDA graph computes exactly that (worker/cuda_graphs.py)."""
    return (t.all_greedy and not t.any_penalty and t.hold_eos is None and t.grammar is None and t.watermark is None
            and t.max_top_n == 0)


def sample(logits: torch.Tensor, t: SamplingTensors, prev_ids: torch.Tensor | None = None) -> SampleResult:
    """logits (B, V) float32; prev_ids (B,) int64 on the device: each row's last token (watermark)."""
    raw_logprobs = torch.log_softmax(logits, dim=-1)  # (B, V): reported logprobs (as TGI does)
    if t.any_penalty and t.history is not None:
        logits = _apply_penalties(logits, t)
    if t.eos_ids is not None and t.hold_eos is not None:  # min_tokens: EOS cannot win yet
        logits = logits.index_copy(1, t.eos_ids, logits[:, t.eos_ids].masked_fill(t.hold_eos, _MASK))
    if t.grammar is not None:
        logits = grammar_mask.apply(logits, t.grammar)
    if t.watermark is not None and t.watermark_rows is not None:
        if prev_ids is None:
            raise ValueError("watermarked rows need their previous tokens")
        logits = t.watermark.apply(logits, t.watermark_rows, prev_ids)
    if t.all_greedy:
        token_ids = logits.argmax(dim=-1)  # (B,)
    else:
        greedy = logits.argmax(dim=-1)  # (B,)
        probs = _warp(logits, t)  # (B, V)
        noise = _exponential(t.seeds, t.steps, logits.shape[-1])  # (B, V)
        drawn = (probs / noise).argmax(dim=-1)  # (B,)
        token_ids = torch.where(t.do_sample, drawn, greedy)
    chosen = raw_logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1)  # (B,)
    top_ids = top_lp = None
    if t.max_top_n > 0:
        top_lp, top_ids = raw_logprobs.topk(t.max_top_n, dim=-1)  # (B, n)
    return SampleResult(token_ids, chosen, top_ids, top_lp)


def _apply_penalties(logits: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
    assert t.history is not None
    valid = t.history >= 0  # (B, L)
    index = t.history.clamp(min=0)
    counts = torch.zeros_like(logits).scatter_add_(1, index, valid.float())  # (B, V)
    seen = counts > 0
    # CTRL-style repetition penalty: shrink positive logits, grow negative ones.
    penalized = torch.where(logits > 0, logits / t.repetition_penalty, logits * t.repetition_penalty)
    logits = torch.where(seen, penalized, logits)
    return logits - t.frequency_penalty * counts - t.presence_penalty * seen.float()


def _warp(logits: torch.Tensor, t: SamplingTensors) -> torch.Tensor:  # -> probs (B, V)
    logits = logits / t.temperature
    if not t.any_truncation:  # nothing to cut: skip the sorts, the most expensive ops of a step on CPU
        return logits.softmax(dim=-1)
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    ranks = torch.arange(logits.shape[-1], device=logits.device).unsqueeze(0)  # (1, V)
    sorted_logits = sorted_logits.masked_fill(ranks >= t.top_k.unsqueeze(1), _MASK)
    sorted_probs = sorted_logits.softmax(dim=-1)
    # top-p: keep the smallest prefix whose mass reaches p (the first token always stays).
    before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_logits = sorted_logits.masked_fill(before >= t.top_p, _MASK)
    if t.any_typical:
        sorted_logits = _typical(sorted_logits, t.typical_p)
    logits = torch.full_like(logits, _MASK).scatter(1, order, sorted_logits)
    return logits.softmax(dim=-1)


def _typical(sorted_logits: torch.Tensor, typical_p: torch.Tensor) -> torch.Tensor:  # (B, V), sorted
    # typical-p: keep tokens whose surprise is closest to the entropy, up to mass p.
    sorted_probs = sorted_logits.softmax(dim=-1)
    logp = torch.log(sorted_probs.clamp_min(1e-30))
    entropy = -(sorted_probs * logp).sum(dim=-1, keepdim=True)  # (B, 1)
    shift = (-logp - entropy).abs()
    shift = torch.where(sorted_probs > 0, shift, torch.full_like(shift, float("inf")))
    typical_order = shift.argsort(dim=-1)
    typical_probs = sorted_probs.gather(1, typical_order)
    typical_before = typical_probs.cumsum(dim=-1) - typical_probs
    drop_typical = (typical_before >= typical_p) & (typical_p < 1.0)
    drop = torch.zeros_like(drop_typical).scatter(1, typical_order, drop_typical)
    return sorted_logits.masked_fill(drop, _MASK)


def _exponential(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:  # (B, V)
    idx = torch.arange(vocab, device=seeds.device, dtype=torch.int64).unsqueeze(0)  # (1, V)
    x = hash_ops.mix(seeds.unsqueeze(1) * hash_ops.GOLDEN + steps.unsqueeze(1) * hash_ops.MIX1 + idx)  # (B, V)
    uniform = (((x >> 40) & 0xFFFFFF).float() + 0.5) / float(1 << 24)  # (0, 1)
    return -torch.log(uniform)
