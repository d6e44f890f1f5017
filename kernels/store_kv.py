"""Scatter each new token's K and V into its cache slot; a negative slot is skipped (padding)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["store_kv"]


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cs, stride_ch,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One (token, kv head) per program: head counts need not be powers of two.
    tok = tl.program_id(0)
    head = tl.program_id(1)
    slot = tl.load(slot_ptr + tok)
    if slot < 0:
        return
    dims = tl.arange(0, BLOCK_D)
    mask = dims < HEAD_DIM
    k = tl.load(k_ptr + tok * stride_kt + head * stride_kh + dims, mask=mask)
    v = tl.load(v_ptr + tok * stride_vt + head * stride_vh + dims, mask=mask)
    dst = slot.to(tl.int64) * stride_cs + head * stride_ch + dims
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(
    k: torch.Tensor,  # (T, n_kv, D)
    v: torch.Tensor,  # (T, n_kv, D)
    k_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    v_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    slot_mapping: torch.Tensor,  # (T,) int64; negative = skip
) -> None:
    num_tokens, n_kv, dim = k.shape
    assert v.shape == k.shape and slot_mapping.shape == (num_tokens,), (k.shape, v.shape, slot_mapping.shape)
    assert k_cache.shape == v_cache.shape and k_cache.shape[2:] == (n_kv, dim), (k_cache.shape, k.shape)
    assert k.stride(2) == 1 and v.stride(2) == 1
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    assert slot_mapping.dtype in (torch.int64, torch.int32)
    if num_tokens == 0:
        return
    _store_kv_kernel[(num_tokens, n_kv)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(1), k_cache.stride(2),
        HEAD_DIM=dim, BLOCK_D=triton.next_power_of_2(dim),
    )
