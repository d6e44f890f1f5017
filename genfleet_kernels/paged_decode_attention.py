"""Paged decode attention: split-KV (flash-decoding) for GQA, a few new tokens per sequence.

Decode, program (sequence, kv head, split): the group's query heads share every K/V load; each
sequence's context is cut into NUM_SPLITS equal slices whose partial outputs and log-sum-exps
stage 2 merges. Splitting keeps the card busy at small batch with long contexts.

A sliding window (`window` > 0) keeps the last `window` keys: the splits cut only that range, so
pages before it are never read. Soft-capping (`softcap` > 0) bounds each score as
softcap * tanh(score / softcap) (Gemma 2) before the softmax.

A sequence may bring up to `max_query_len` new tokens (speculative verification: the last
sampled token and its drafts), causal among themselves: query j sits at position
seq_len - q_len + j and sees the keys up to it (and, with a window, the `window` keys ending
there). The program's tile is every (query, head of the group) pair, row j * group + g, so all of
a sequence's queries still share each K/V load.

Over FP8 pages the keys are cast to float16 as loaded (their dot contracts along the stored
rows), while the values, whose dot contracts across rows, are read as int32 words and turned into
float16 by moving bits (paged_kv.fp8_words_as_f16): cast, the compiler keeps them FP8 in shared
memory and reads the value operand a byte at a time. A key's scale multiplies its score column and
a value's its probability, once per tile; both are loaded a tile ahead. `fp8_words=False` keeps the
former reading (both cast, scales loaded in the tile's iteration), for comparison.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.paged_kv import (
    check_paged_inputs, dot_precision, fp8_dots, fp8_word_unit, fp8_words_as_f16, page_slots, paged_scales,
    paged_tile, scaled_scores, tile_scales, window_or_all,
)

__all__ = ["paged_decode_attention", "default_launch"]

_MAX_SPLITS = 32


# NOTE: stride_bt is each step's block-table width; specialized (a multiple of 16, or not), a
# width of the other kind would compile the kernel anew mid-serving (~0.3-1 s, every request waits).
@triton.jit(do_not_specialize=["stride_bt"])
def _decode_partial_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, bt_ptr, seq_lens_ptr, qsl_ptr,
    part_out_ptr, part_lse_ptr,
    scale, softcap, window, group,
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_sb, stride_ss,
    stride_bt, stride_pt, stride_ph, stride_ps, stride_lt, stride_lh,
    PAGE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
    KV_FP8: tl.constexpr, DOT_F16: tl.constexpr, V_LIFT: tl.constexpr, SOFTCAP: tl.constexpr,
    FP8_WORDS: tl.constexpr, E4M3: tl.constexpr, V_UNIT: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    q_lo = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_lo
    r = tl.arange(0, BLOCK_G)  # (G,): row j * group + g
    j = r // group  # (G,): which of the sequence's queries
    g = r % group
    d = tl.arange(0, BLOCK_D)  # (D,)
    r_mask = j < q_len
    d_mask = d < HEAD_DIM
    dw = tl.arange(0, BLOCK_D // 4)  # (D / 4,): a tile's words when FP8 pages are read four values a word
    dw_mask = dw < HEAD_DIM // 4
    heads = kv_head * group + g  # (G,)
    rows = (q_lo + j).to(tl.int64)  # (G,): the query's token row
    # G is padded to 16 so the products run on tensor cores; padded rows read zeros.
    q = tl.load(
        q_ptr + rows[:, None] * stride_qt + heads[:, None] * stride_qh + d[None, :],
        mask=r_mask[:, None] & d_mask[None, :], other=0.0,
    )  # (G, D)
    if DOT_F16:  # FP8 pages convert exactly to float16 (one instruction on Hopper): the products run in it
        q = q.to(tl.float16)
    q_pos = seq_len - q_len + j  # (G,): the last key each row sees
    lo = tl.maximum(seq_len - q_len + 1 - window, 0)  # the first key the first query sees
    per_split = tl.cdiv(tl.cdiv(seq_len - lo, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = lo + split * per_split
    end = tl.minimum(seq_len, start + per_split)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    # Over FP8 pages (FP8_WORDS), each tile's scales are loaded one iteration ahead, so that their
    # gathers (block table, then scales) wait behind this tile's products rather than before them.
    ks_next = tl.zeros([BLOCK_N], tl.float32)
    vs_next = ks_next
    if KV_FP8 and FP8_WORDS:
        ks_next, vs_next = tile_scales(k_scale_ptr, v_scale_ptr, bt_ptr, seq, stride_bt, start, end, kv_head,
                                       stride_sb, stride_ss, PAGE, BLOCK_N)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)  # (N,)
        n_mask = n < end
        blk, off = page_slots(bt_ptr, seq, stride_bt, n, n_mask, PAGE)  # (N,), (N,)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = paged_tile(k_cache_ptr, blk, off, kv_head, stride_kb, stride_ks, stride_kh, d, kv_mask)  # (N, D)
        ks = ks_next
        vs = vs_next
        if KV_FP8 and FP8_WORDS:
            ks_next, vs_next = tile_scales(k_scale_ptr, v_scale_ptr, bt_ptr, seq, stride_bt, n0 + BLOCK_N, end,
                                           kv_head, stride_sb, stride_ss, PAGE, BLOCK_N)
        elif KV_FP8:
            ks = paged_scales(k_scale_ptr, blk, off, kv_head, stride_sb, stride_ss, n_mask)
            vs = paged_scales(v_scale_ptr, blk, off, kv_head, stride_sb, stride_ss, n_mask)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION)  # (G, N)
        if KV_FP8:  # a key's scale multiplies its whole score column
            s = s * ks[None, :]
        s = scaled_scores(s, scale, softcap, SOFTCAP)  # (G, N), log2 units
        visible = (n[None, :] <= q_pos[:, None]) & (n[None, :] > q_pos[:, None] - window)  # (G, N)
        s = tl.where(n_mask[None, :] & visible & r_mask[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that sees no key of this tile yet (a later query's slice, a padded row) keeps
        # m = -inf; it subtracts 0 instead, so its weights stay 0 rather than NaN.
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])  # (G, N)
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        if KV_FP8 and FP8_WORDS:  # the value tile as (N, D / 4) words, each four FP8 values
            v = fp8_words_as_f16(paged_tile(v_cache_ptr, blk, off, kv_head, stride_vb, stride_vs, stride_vh, dw,
                                            n_mask[:, None] & dw_mask[None, :]), E4M3)  # (N, D), V_UNIT x value
        else:
            v = paged_tile(v_cache_ptr, blk, off, kv_head, stride_vb, stride_vs, stride_vh, d, kv_mask)  # (N, D)
        pv = p
        if KV_FP8:  # and a value's scale its probability's weight
            pv = p * vs[None, :] * V_LIFT
        acc = acc * alpha[:, None] + tl.dot(pv.to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION)
        m_i = m_new
    # An empty slice (short sequence, or outside a row's keys) leaves lse = -inf: stage 2 gives it zero weight.
    has_keys = l_i > 0
    l_safe = tl.where(has_keys, l_i, 1.0)
    lse = tl.where(has_keys, m_i + tl.log2(l_safe), float("-inf"))
    part = acc / (l_safe[:, None] * (V_LIFT * V_UNIT))
    tl.store(
        part_out_ptr + rows[:, None] * stride_pt + heads[:, None] * stride_ph + split * stride_ps + d[None, :],
        part, mask=r_mask[:, None] & d_mask[None, :],
    )
    tl.store(part_lse_ptr + rows * stride_lt + heads * stride_lh + split, lse, mask=r_mask)


@triton.jit
def _decode_reduce_kernel(
    part_out_ptr, part_lse_ptr, out_ptr,
    stride_pt, stride_ph, stride_ps, stride_lt, stride_lh, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # a query token
    head = tl.program_id(1)
    s = tl.arange(0, NUM_SPLITS)  # (S,)
    d = tl.arange(0, BLOCK_D)  # (D,)
    d_mask = d < HEAD_DIM
    lse = tl.load(part_lse_ptr + row * stride_lt + head * stride_lh + s)  # (S,)
    w = tl.exp2(lse - tl.max(lse, 0))  # (S,)
    parts = tl.load(
        part_out_ptr + row * stride_pt + head * stride_ph + s[:, None] * stride_ps + d[None, :],
        mask=d_mask[None, :], other=0.0,
    )  # (S, D)
    out = tl.sum(parts * w[:, None], 0) / tl.sum(w, 0)  # (D,)
    tl.store(out_ptr + row * stride_ot + head * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d_mask)


def paged_decode_attention(
    q: torch.Tensor,  # (T, H, D): each sequence's new tokens, at most max_query_len of them
    k_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    v_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    block_tables: torch.Tensor,  # (B, max_blocks) int32
    seq_lens: torch.Tensor,  # (B,) int32: cached + new tokens per sequence
    query_start_loc: torch.Tensor,  # (B + 1,) int32
    scale: float,
    k_scale: torch.Tensor | None = None,  # (num_blocks, block_size, n_kv) float16: FP8 caches only
    v_scale: torch.Tensor | None = None,
    num_splits: int | None = None,
    window: int = 0,  # > 0: each query sees its last `window` keys only
    softcap: float = 0.0,  # > 0: scores become softcap * tanh(score / softcap)
    max_query_len: int = 1,  # host int: the most new tokens of any sequence (no device sync to find it)
    block_n: int | None = None,  # keys per tile; None: default_launch's (as the warps and stages)
    num_warps: int | None = None,
    num_stages: int | None = None,
    fp8_words: bool = True,  # FP8 values read as int32 words and their scales a tile ahead; False: as before
) -> torch.Tensor:  # (T, H, D)
    fp8 = check_paged_inputs(q, k_cache, v_cache, k_scale, v_scale, block_tables, seq_lens, query_start_loc)
    assert max_query_len >= 1, max_query_len
    num_seqs = block_tables.shape[0]
    num_tokens, num_heads, dim = q.shape
    n_kv = k_cache.shape[2]
    group = num_heads // n_kv
    out = torch.empty_like(q)  # (T, H, D)
    if num_seqs == 0:
        return out
    launch = default_launch(num_seqs * n_kv, q.device)
    num_splits = launch["num_splits"] if num_splits is None else num_splits
    block_n = launch["block_n"] if block_n is None else block_n
    num_warps = launch["num_warps"] if num_warps is None else num_warps
    num_stages = launch["num_stages"] if num_stages is None else num_stages
    assert num_splits & (num_splits - 1) == 0, "num_splits must be a power of two"
    # Partial results per query token: (T, H, S, D) and (T, H, S).
    part_out = torch.empty(num_tokens, num_heads, num_splits, dim, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(num_tokens, num_heads, num_splits, dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(dim)
    words = fp8 and fp8_words and dim % 4 == 0
    v_pages = v_cache.view(torch.int32) if words else v_cache
    _decode_partial_kernel[(num_seqs, n_kv, num_splits)](
        q, k_cache, v_pages, k_scale if fp8 else k_cache, v_scale if fp8 else v_cache,
        block_tables, seq_lens, query_start_loc, part_out, part_lse,
        scale, softcap, window_or_all(window), group,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_pages.stride(0), v_pages.stride(1), v_pages.stride(2),
        k_scale.stride(0) if fp8 else 0, k_scale.stride(1) if fp8 else 0,
        block_tables.stride(0), part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1),
        PAGE=k_cache.shape[1], DOT_PRECISION=dot_precision(q.dtype), HEAD_DIM=dim, BLOCK_D=block_d,
        BLOCK_G=max(16, triton.next_power_of_2(max_query_len * group)), BLOCK_N=block_n, NUM_SPLITS=num_splits,
        KV_FP8=fp8, **fp8_dots(q.dtype, k_cache.dtype), SOFTCAP=softcap > 0,
        FP8_WORDS=words, E4M3=k_cache.dtype == torch.float8_e4m3fn, V_UNIT=fp8_word_unit(v_cache.dtype) if words else 1.0,
        num_warps=num_warps, num_stages=num_stages,
    )
    _decode_reduce_kernel[(num_tokens, num_heads)](
        part_out, part_lse, out,
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        out.stride(0), out.stride(1),
        HEAD_DIM=dim, BLOCK_D=block_d, NUM_SPLITS=num_splits,
    )
    return out


_sm_count: dict[int, int] = {}


def default_launch(num_programs: int, device: torch.device) -> dict[str, int]:
    """The launch settings for `num_programs` (sequence, KV head) pairs: enough slices of each
    context for about two waves over the SMs (a large batch needs none), 64-key tiles."""
    return {"num_splits": _default_splits(num_programs, device), "block_n": 64, "num_warps": 4, "num_stages": 2}


def _default_splits(num_programs: int, device: torch.device) -> int:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in _sm_count:
            _sm_count[index] = torch.cuda.get_device_properties(index).multi_processor_count
        sms = _sm_count[index]
    else:
        sms = 4
    want = triton.cdiv(2 * sms, num_programs)
    return min(_MAX_SPLITS, triton.next_power_of_2(max(want, 1)))
