"""Rotary position embedding on q and k from a [cos | sin] table (any scaling is baked into the table)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["rotary_embedding"]


@triton.jit
def _rotary_kernel(
    pos_ptr, q_ptr, k_ptr, q_out_ptr, k_out_ptr, cache_ptr,
    num_q_heads,
    stride_qt, stride_qh, stride_kt, stride_kh,
    stride_qot, stride_qoh, stride_kot, stride_koh, stride_cache,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, IS_NEOX: tl.constexpr,
):
    # One (token, head) per program; heads [0, num_q_heads) are q's, the rest k's.
    tok = tl.program_id(0)
    head = tl.program_id(1)
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    i = tl.arange(0, BLOCK_H)
    mask = i < HALF
    cos = tl.load(cache_ptr + pos * stride_cache + i, mask=mask, other=0.0)
    sin = tl.load(cache_ptr + pos * stride_cache + HALF + i, mask=mask, other=0.0)
    if head < num_q_heads:
        src = q_ptr + tok * stride_qt + head * stride_qh
        dst = q_out_ptr + tok * stride_qot + head * stride_qoh
    else:
        src = k_ptr + tok * stride_kt + (head - num_q_heads) * stride_kh
        dst = k_out_ptr + tok * stride_kot + (head - num_q_heads) * stride_koh
    if IS_NEOX:  # rotate-half: pairs (i, i + D/2)
        lo, hi = i, i + HALF
    else:  # interleaved: pairs (2i, 2i + 1)
        lo, hi = 2 * i, 2 * i + 1
    x1 = tl.load(src + lo, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + hi, mask=mask, other=0.0).to(tl.float32)
    out_ty = dst.dtype.element_ty
    tl.store(dst + lo, (x1 * cos - x2 * sin).to(out_ty), mask=mask)
    tl.store(dst + hi, (x2 * cos + x1 * sin).to(out_ty), mask=mask)


def rotary_embedding(
    positions: torch.Tensor,  # (T,) int64
    q: torch.Tensor,  # (T, H, D)
    k: torch.Tensor,  # (T, n_kv, D)
    cos_sin_cache: torch.Tensor,  # (max_position, D) float32
    is_neox: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    num_tokens, num_heads, dim = q.shape
    assert k.shape[0] == num_tokens and k.shape[2] == dim and positions.shape == (num_tokens,), (q.shape, k.shape)
    assert cos_sin_cache.shape[1] == dim and cos_sin_cache.dtype == torch.float32 and cos_sin_cache.stride(1) == 1
    assert q.stride(2) == 1 and k.stride(2) == 1 and dim % 2 == 0
    q_out = torch.empty_like(q, memory_format=torch.contiguous_format)  # (T, H, D)
    k_out = torch.empty_like(k, memory_format=torch.contiguous_format)  # (T, n_kv, D)
    if num_tokens == 0:
        return q_out, k_out
    half = dim // 2
    _rotary_kernel[(num_tokens, num_heads + k.shape[1])](
        positions, q, k, q_out, k_out, cos_sin_cache, num_heads,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1), cos_sin_cache.stride(0),
        HALF=half, BLOCK_H=triton.next_power_of_2(half), IS_NEOX=is_neox,
    )
    return q_out, k_out
