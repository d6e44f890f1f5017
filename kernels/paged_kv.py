"""Reading K/V tiles out of the paged cache: shared by the decode and the varlen attention kernels.

A sequence's position n lives in block `block_tables[seq, n // PAGE]` at offset `n % PAGE`;
`page_slots` turns a tile of positions into (block, offset) pairs and `paged_tile` loads the
(N, D) tile of one KV head at those slots (zeros where masked).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["page_slots", "paged_tile"]


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
