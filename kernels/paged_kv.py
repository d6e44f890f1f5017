"""What the two paged attention kernels share: reading K/V tiles out of the paged cache, the checks
their launchers make on the paged inputs, and the dot precision they compute in.

A sequence's position n lives in block `block_tables[seq, n // PAGE]` at offset `n % PAGE`;
`page_slots` turns a tile of positions into (block, offset) pairs and `paged_tile` loads the
(N, D) tile of one KV head at those slots (zeros where masked).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["LOG2E", "page_slots", "paged_tile", "check_paged_inputs", "dot_precision"]

# Softmax runs in base 2 (exp2 is cheaper): scores are scaled by log2(e) once, in the launcher.
LOG2E = 1.4426950408889634


@triton.jit
def page_slots(bt_ptr, seq, stride_bt, n, n_mask, PAGE: tl.constexpr):
    blk = tl.load(bt_ptr + seq * stride_bt + n // PAGE, mask=n_mask, other=0).to(tl.int64)  # (N,)
    off = (n % PAGE).to(tl.int64)  # (N,)
    return blk, off


@triton.jit
def paged_tile(cache_ptr, blk, off, kv_head, stride_b, stride_s, stride_h, d, mask):
    return tl.load(
        cache_ptr + blk[:, None] * stride_b + off[:, None] * stride_s + kv_head * stride_h + d[None, :],
        mask=mask, other=0.0,
    )  # (N, D)


def check_paged_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
) -> None:
    num_heads, dim = q.shape[1], q.shape[2]
    assert q.dim() == 3 and q.stride(2) == 1, q.shape
    assert k_cache.shape == v_cache.shape and k_cache.dim() == 4 and k_cache.shape[3] == dim, (k_cache.shape, q.shape)
    assert k_cache.stride(3) == 1 and v_cache.stride(3) == 1
    assert num_heads % k_cache.shape[2] == 0, (num_heads, k_cache.shape)
    assert q.dtype == k_cache.dtype == v_cache.dtype, (q.dtype, k_cache.dtype)
    assert block_tables.dim() == 2 and block_tables.stride(1) == 1
    assert seq_lens.shape == (block_tables.shape[0],) and query_start_loc.shape == (block_tables.shape[0] + 1,)
    assert block_tables.dtype in (torch.int32, torch.int64) and seq_lens.dtype in (torch.int32, torch.int64)


def dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs would run as TF32 (10-bit mantissa) by default: keep them exact.
    return "ieee" if dtype == torch.float32 else "tf32"
