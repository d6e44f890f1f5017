"""Causal attention for variable-length new tokens that reads every key, cached prefix included, from pages.

One launch covers a whole varlen batch: program (sequence, query tile, head). A sequence's q_len
queries are its last positions among seq_lens[i]; their K/V are already in the cache (store_kv runs
first), so prefill, chunked prefill over a cached prefix, and decode rows are all the same case.
With a sliding window (`window` > 0) query position p sees keys p - window + 1 .. p, and a tile's
loop starts at the first key any of its rows sees; soft-capping as in the decode kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.paged_kv import (
    check_paged_inputs, dot_precision, fp8_dots, page_slots, paged_scales, paged_tile, scaled_scores,
    window_or_all,
)

__all__ = ["prefill_attention"]


# NOTE: stride_bt is each step's block-table width; specialized (a multiple of 16, or not), a
# width of the other kind would compile the kernel anew mid-serving (~0.3-1 s, every request waits).
@triton.jit(do_not_specialize=["stride_bt"])
def _prefill_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, bt_ptr, seq_lens_ptr, qsl_ptr, out_ptr,
    scale, softcap, window, group,
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_sb, stride_ss,
    stride_bt, stride_ot, stride_oh,
    PAGE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KV_FP8: tl.constexpr, DOT_F16: tl.constexpr, V_LIFT: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    seq = tl.program_id(0)
    tile = tl.program_id(1)
    head = tl.program_id(2)
    q_lo = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_lo
    # The grid is sized without a host sync, so most tiles of short sequences have nothing to do.
    if tile * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    ctx = seq_len - q_len
    kv_head = head // group
    m = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # (M,)
    d = tl.arange(0, BLOCK_D)  # (D,)
    m_mask = m < q_len
    d_mask = d < HEAD_DIM
    q_rows = (q_lo + m).to(tl.int64)
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + d[None, :],
        mask=m_mask[:, None] & d_mask[None, :], other=0.0,
    )  # (M, D)
    if DOT_F16:  # FP8 pages convert exactly to float16 (one instruction on Hopper): the products run in it
        q = q.to(tl.float16)
    q_pos = ctx + m  # (M,)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Keys past the tile's last query position are masked for every row: stop there.
    end = tl.minimum(seq_len, ctx + (tile + 1) * BLOCK_M)
    # And keys before the window of the tile's first query are masked for every row: start there.
    begin = tl.maximum(ctx + tile * BLOCK_M - window + 1, 0)
    for n0 in range(begin, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)  # (N,)
        n_mask = n < end
        blk, off = page_slots(bt_ptr, seq, stride_bt, n, n_mask, PAGE)  # (N,), (N,)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = paged_tile(k_cache_ptr, blk, off, kv_head, stride_kb, stride_ks, stride_kh, d, kv_mask)  # (N, D)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION)  # (M, N)
        if KV_FP8:  # a key's scale multiplies its whole score column
            s = s * paged_scales(k_scale_ptr, blk, off, kv_head, stride_sb, stride_ss, n_mask)[None, :]
        s = scaled_scores(s, scale, softcap, SOFTCAP)  # (M, N), log2 units
        visible = (n[None, :] <= q_pos[:, None]) & (n[None, :] > q_pos[:, None] - window) & n_mask[None, :]
        s = tl.where(visible, s, float("-inf"))
        # A row can see no key of this tile yet (a window starts after it): its maximum is -inf,
        # and it subtracts 0 instead so that no -inf - -inf appears.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_sub[:, None])  # (M, N)
        alpha = tl.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = paged_tile(v_cache_ptr, blk, off, kv_head, stride_vb, stride_vs, stride_vh, d, kv_mask)  # (N, D)
        if KV_FP8:  # and a value's scale its probability's weight
            p = p * paged_scales(v_scale_ptr, blk, off, kv_head, stride_sb, stride_ss, n_mask)[None, :] * V_LIFT
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION)
        m_i = m_new
    # Padding rows past q_len can see no key with a window: they divide by 1 (and are not stored).
    out = acc / (tl.where(l_i > 0, l_i, 1.0)[:, None] * V_LIFT)
    tl.store(
        out_ptr + q_rows[:, None] * stride_ot + head * stride_oh + d[None, :],
        out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :],
    )


def prefill_attention(
    q: torch.Tensor,  # (T, H, D)
    k_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    v_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    block_tables: torch.Tensor,  # (B, max_blocks) int32
    seq_lens: torch.Tensor,  # (B,) int32
    query_start_loc: torch.Tensor,  # (B + 1,) int32
    scale: float,
    k_scale: torch.Tensor | None = None,  # (num_blocks, block_size, n_kv) float16: FP8 caches only
    v_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,  # (T, H, D)
    window: int = 0,  # > 0: each query sees its last `window` keys only (itself included)
    softcap: float = 0.0,  # > 0: scores become softcap * tanh(score / softcap)
) -> torch.Tensor:  # (T, H, D)
    fp8 = check_paged_inputs(q, k_cache, v_cache, k_scale, v_scale, block_tables, seq_lens, query_start_loc)
    num_tokens, num_heads, dim = q.shape
    out = torch.empty_like(q) if out is None else out
    num_seqs = block_tables.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    block_m, block_n = (64, 64) if dim <= 128 else (32, 32)
    # Upper bound on any sequence's query count, known without reading query_start_loc.
    grid = (num_seqs, triton.cdiv(num_tokens - num_seqs + 1, block_m), num_heads)
    _prefill_attention_kernel[grid](
        q, k_cache, v_cache, k_scale if fp8 else k_cache, v_scale if fp8 else v_cache,
        block_tables, seq_lens, query_start_loc, out,
        scale, softcap, window_or_all(window), num_heads // k_cache.shape[2],
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        k_scale.stride(0) if fp8 else 0, k_scale.stride(1) if fp8 else 0,
        block_tables.stride(0), out.stride(0), out.stride(1),
        PAGE=k_cache.shape[1], DOT_PRECISION=dot_precision(q.dtype), HEAD_DIM=dim, BLOCK_D=triton.next_power_of_2(dim),
        BLOCK_M=block_m, BLOCK_N=block_n, KV_FP8=fp8, **fp8_dots(q.dtype, k_cache.dtype), SOFTCAP=softcap > 0,
        num_warps=4, num_stages=2,
    )
    return out
