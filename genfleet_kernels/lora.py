"""Batched LoRA: rows of several adapters (and of the base model) in one launch per stage, SGMV-style.

A step's token rows come in segments, each a run of rows served by one adapter slot (a request's
rows, or several consecutive requests of one adapter): segment s is rows seg_starts[s] ..
seg_starts[s+1] - 1, its slot seg_slots[s], -1 for the base model (no update). Each linear that an
adapter targets adds x @ A[slot].T @ B[slot].T to the base projection's output, in two kernels:

- shrink: program (segment, row block) multiplies its BLOCK_M rows by the slot's A (R, K), looping
  over K, into s (T, R) float32: R (every fused part's rank, padded) fits one tile;
- expand: program (segment, row block, column block) multiplies those rows of s by the slot's B
  (N, R) and adds the product to `out` in place. Scaling (alpha / r) is folded into B at load.

A fused projection (qkv, gate_up) stacks its parts' A rows, and its B is block-diagonal (zero
outside each part's rows x rank): one shrink and one expand serve every part. Programs of base
segments and of row blocks past their segment's end return at once; the grid's second axis is
the longest segment (a host int, no device sync).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.paged_kv import dot_precision

__all__ = ["lora_add"]


@triton.jit
def _segment_block(seg_starts_ptr, seg_slots_ptr, rank, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    # This program's rows of its segment, the segment's slot, the rank lanes, and whether there is
    # anything to do (1), or not (0: a base segment, or a row block past the segment's end).
    seg = tl.program_id(0)
    slot = tl.load(seg_slots_ptr + seg).to(tl.int64)
    first = tl.load(seg_starts_ptr + seg) + tl.program_id(1) * BLOCK_M
    end = tl.load(seg_starts_ptr + seg + 1)
    live = ((slot >= 0) & (first < end)).to(tl.int32)
    rows = first + tl.arange(0, BLOCK_M)  # (M,)
    r = tl.arange(0, BLOCK_R)  # (R,)
    return slot, rows.to(tl.int64), rows < end, r, r < rank, live


@triton.jit
def _lora_shrink_kernel(
    x_ptr, a_ptr, s_ptr, seg_starts_ptr, seg_slots_ptr,
    k_in, rank,
    stride_xm, stride_al, stride_ar, stride_sm,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    slot, rows, row_mask, r, r_mask, live = _segment_block(seg_starts_ptr, seg_slots_ptr, rank, BLOCK_M, BLOCK_R)
    if live == 0:
        return
    acc = tl.zeros([BLOCK_M, BLOCK_R], tl.float32)
    for k0 in range(0, k_in, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)  # (K,)
        k_mask = k < k_in
        x = tl.load(x_ptr + rows[:, None] * stride_xm + k[None, :], mask=row_mask[:, None] & k_mask[None, :],
                    other=0.0)  # (M, K)
        a = tl.load(a_ptr + slot * stride_al + r[None, :] * stride_ar + k[:, None],
                    mask=k_mask[:, None] & r_mask[None, :], other=0.0)  # (K, R): A's rows are ranks
        acc += tl.dot(x, a, input_precision=DOT_PRECISION)
    tl.store(s_ptr + rows[:, None] * stride_sm + r[None, :], acc, mask=row_mask[:, None] & r_mask[None, :])


@triton.jit
def _lora_expand_kernel(
    s_ptr, b_ptr, out_ptr, seg_starts_ptr, seg_slots_ptr,
    n_out, rank,
    stride_sm, stride_bl, stride_bn, stride_om,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    slot, rows, row_mask, r, r_mask, live = _segment_block(seg_starts_ptr, seg_slots_ptr, rank, BLOCK_M, BLOCK_R)
    if live == 0:
        return
    n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)  # (N,)
    n_mask = n < n_out
    s = tl.load(s_ptr + rows[:, None] * stride_sm + r[None, :], mask=row_mask[:, None] & r_mask[None, :],
                other=0.0)  # (M, R) float32
    b = tl.load(b_ptr + slot * stride_bl + n[None, :] * stride_bn + r[:, None],
                mask=r_mask[:, None] & n_mask[None, :], other=0.0)  # (R, N): B's rows are outputs
    delta = tl.dot(s.to(b.dtype), b, input_precision=DOT_PRECISION)  # (M, N) float32
    mask = row_mask[:, None] & n_mask[None, :]
    out_ptrs = out_ptr + rows[:, None] * stride_om + n[None, :]
    out = tl.load(out_ptrs, mask=mask, other=0.0)
    tl.store(out_ptrs, (out.to(tl.float32) + delta).to(out_ptr.dtype.element_ty), mask=mask)


def lora_add(
    out: torch.Tensor,  # (T, N): the base projection's output, updated in place
    x: torch.Tensor,  # (T, K): the projection's input
    lora_a: torch.Tensor,  # (L, R, K): each slot's A rows (fused parts stacked, zero-padded ranks)
    lora_b: torch.Tensor,  # (L, N, R): each slot's scaled B (block-diagonal for fused parts)
    seg_starts: torch.Tensor,  # (S + 1,) int32: segment s is rows seg_starts[s]:seg_starts[s+1]
    seg_slots: torch.Tensor,  # (S,) int32: each segment's slot, -1 = the base model (no update)
    max_seg_len: int,  # host: the longest segment's rows
) -> None:
    num_tokens, k_in = x.shape
    num_slots, rank, _ = lora_a.shape
    n_out = out.shape[1]
    assert x.stride(1) == 1 and out.stride(1) == 1 and lora_a.is_contiguous() and lora_b.is_contiguous()
    assert lora_a.shape[2] == k_in and lora_b.shape == (num_slots, n_out, rank), (lora_a.shape, lora_b.shape)
    assert out.shape[0] == num_tokens and x.dtype == lora_a.dtype == lora_b.dtype, (x.dtype, lora_a.dtype)
    assert seg_starts.dtype == seg_slots.dtype == torch.int32 and seg_starts.shape[0] == seg_slots.shape[0] + 1
    num_segs = seg_slots.shape[0]
    if num_tokens == 0 or num_segs == 0 or max_seg_len == 0:
        return
    block_m = 16
    block_r = max(16, triton.next_power_of_2(rank))
    row_blocks = triton.cdiv(max_seg_len, block_m)
    precision = dot_precision(x.dtype)
    s = torch.empty(num_tokens, rank, dtype=torch.float32, device=x.device)  # (T, R)
    block_k = min(64, max(16, triton.next_power_of_2(k_in)))
    _lora_shrink_kernel[(num_segs, row_blocks)](
        x, lora_a, s, seg_starts, seg_slots,
        k_in, rank,
        x.stride(0), lora_a.stride(0), lora_a.stride(1), s.stride(0),
        DOT_PRECISION=precision, BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_K=block_k, num_warps=4,
    )
    block_n = min(64, max(16, triton.next_power_of_2(n_out)))
    _lora_expand_kernel[(num_segs, row_blocks, triton.cdiv(n_out, block_n))](
        s, lora_b, out, seg_starts, seg_slots,
        n_out, rank,
        s.stride(0), lora_b.stride(0), lora_b.stride(1), out.stride(0),
        DOT_PRECISION=precision, BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_N=block_n, num_warps=4,
    )
