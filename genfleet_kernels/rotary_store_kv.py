"""Rotary on q and k, and k and v written into their cache slots, in one launch.

The unfused path is two kernels (genfleet_kernels/rotary_embedding.py, then genfleet_kernels/store_kv.py) with the
rotated k written to memory between them; here each program rotates one q head, or one KV head
of k (and copies v's), and stores the KV pair straight into the cache. The attention kernels read
k and v from the cache only, so the rotated k is never written anywhere else. Rounding is the
unfused path's: the rotated values are rounded to q's / k's dtype first, and an FP8 cache
quantizes those rounded values (genfleet_kernels/store_kv.py's arithmetic). A negative slot skips the
store (padding rows); their q is still rotated.

Reference: genfleet_kernels/reference_fused.py `rotary_store_kv`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.fp8 import fp8_format, round_to_fp8_grid
from genfleet_kernels.paged_kv import check_kv_scales
from genfleet_kernels.pdl import launch, wait_then_release
from genfleet_kernels.reference import KV_MIN_SCALE

__all__ = ["rotary_store_kv"]


@triton.jit
def _rotate_pair(src, lo, hi, cos, sin, mask):
    # float32: the caller rounds to the activation dtype, as the unfused rotary stores it.
    x1 = tl.load(src + lo, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + hi, mask=mask, other=0.0).to(tl.float32)
    return x1 * cos - x2 * sin, x2 * cos + x1 * sin


@triton.jit
def _quantize_halves(a, b, mask, FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr, MANTISSA: tl.constexpr,
                     MIN_EXP: tl.constexpr):
    # genfleet_kernels/store_kv.py's per-row FP8 quantization, of a row held as its two halves.
    af, bf = a.to(tl.float32), b.to(tl.float32)
    amax = tl.maximum(tl.max(tl.where(mask, tl.abs(af), 0.0), 0), tl.max(tl.where(mask, tl.abs(bf), 0.0), 0))
    scale = tl.minimum(tl.maximum(amax * (1.0 / FP8_MAX), MIN_SCALE), 65504.0).to(tl.float16).to(tl.float32)
    qa = tl.minimum(tl.maximum(tl.math.div_rn(af, scale), -FP8_MAX), FP8_MAX)
    qb = tl.minimum(tl.maximum(tl.math.div_rn(bf, scale), -FP8_MAX), FP8_MAX)
    return round_to_fp8_grid(qa, MANTISSA, MIN_EXP), round_to_fp8_grid(qb, MANTISSA, MIN_EXP), scale


@triton.jit
def _rotary_store_kv_kernel(
    pos_ptr, q_ptr, k_ptr, v_ptr, q_out_ptr, cos_sin_ptr, slot_ptr,
    k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr,
    num_q_heads, n_kv,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_qot, stride_qoh, stride_cos, stride_cs, stride_ch,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, IS_NEOX: tl.constexpr,
    KV_FP8: tl.constexpr, FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr, MANTISSA: tl.constexpr,
    MIN_EXP: tl.constexpr, PDL: tl.constexpr,
):
    wait_then_release(PDL)
    # One (token, head) per program: heads [0, num_q_heads) are q's, the rest KV heads.
    tok = tl.program_id(0)
    head = tl.program_id(1)
    i = tl.arange(0, BLOCK_H)
    mask = i < HALF
    if IS_NEOX:  # rotate-half: pairs (i, i + D/2)
        lo, hi = i, i + HALF
    else:  # interleaved: pairs (2i, 2i + 1)
        lo, hi = 2 * i, 2 * i + 1
    if head < num_q_heads:
        pos = tl.load(pos_ptr + tok).to(tl.int64)
        cos = tl.load(cos_sin_ptr + pos * stride_cos + i, mask=mask, other=0.0)
        sin = tl.load(cos_sin_ptr + pos * stride_cos + HALF + i, mask=mask, other=0.0)
        a, b = _rotate_pair(q_ptr + tok * stride_qt + head * stride_qh, lo, hi, cos, sin, mask)
        dst = q_out_ptr + tok * stride_qot + head * stride_qoh
        tl.store(dst + lo, a.to(q_out_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + hi, b.to(q_out_ptr.dtype.element_ty), mask=mask)
    else:
        slot = tl.load(slot_ptr + tok)
        if slot >= 0:
            kv = head - num_q_heads
            pos = tl.load(pos_ptr + tok).to(tl.int64)
            cos = tl.load(cos_sin_ptr + pos * stride_cos + i, mask=mask, other=0.0)
            sin = tl.load(cos_sin_ptr + pos * stride_cos + HALF + i, mask=mask, other=0.0)
            a, b = _rotate_pair(k_ptr + tok * stride_kt + kv * stride_kh, lo, hi, cos, sin, mask)
            a, b = a.to(k_ptr.dtype.element_ty), b.to(k_ptr.dtype.element_ty)
            v_src = v_ptr + tok * stride_vt + kv * stride_vh
            va = tl.load(v_src + lo, mask=mask, other=0.0)
            vb = tl.load(v_src + hi, mask=mask, other=0.0)
            dst = slot.to(tl.int64) * stride_cs + kv * stride_ch
            if KV_FP8:  # one scale per (slot, KV head) over the whole row: both halves together
                a, b, k_scale = _quantize_halves(a, b, mask, FP8_MAX, MIN_SCALE, MANTISSA, MIN_EXP)
                va, vb, v_scale = _quantize_halves(va, vb, mask, FP8_MAX, MIN_SCALE, MANTISSA, MIN_EXP)
                scale_at = slot.to(tl.int64) * n_kv + kv
                tl.store(k_scale_ptr + scale_at, k_scale.to(k_scale_ptr.dtype.element_ty))
                tl.store(v_scale_ptr + scale_at, v_scale.to(v_scale_ptr.dtype.element_ty))
            tl.store(k_cache_ptr + dst + lo, a.to(k_cache_ptr.dtype.element_ty), mask=mask)
            tl.store(k_cache_ptr + dst + hi, b.to(k_cache_ptr.dtype.element_ty), mask=mask)
            tl.store(v_cache_ptr + dst + lo, va.to(v_cache_ptr.dtype.element_ty), mask=mask)
            tl.store(v_cache_ptr + dst + hi, vb.to(v_cache_ptr.dtype.element_ty), mask=mask)


def rotary_store_kv(
    positions: torch.Tensor,  # (T,) int64
    q: torch.Tensor,  # (T, H, D)
    k: torch.Tensor,  # (T, n_kv, D)
    v: torch.Tensor,  # (T, n_kv, D)
    cos_sin_cache: torch.Tensor,  # (max_position, D) float32
    k_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    v_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    slot_mapping: torch.Tensor,  # (T,) int64; negative = skip
    k_scale: torch.Tensor | None = None,  # (num_blocks, block_size, n_kv) float16: FP8 caches only
    v_scale: torch.Tensor | None = None,
    is_neox: bool = True,
) -> torch.Tensor:  # (T, H, D): the rotated q
    num_tokens, num_heads, dim = q.shape
    n_kv = k.shape[1]
    assert k.shape == v.shape == (num_tokens, n_kv, dim), (q.shape, k.shape, v.shape)
    assert positions.shape == (num_tokens,) and slot_mapping.shape == (num_tokens,), (positions.shape, slot_mapping.shape)
    assert cos_sin_cache.shape[1] == dim and cos_sin_cache.dtype == torch.float32 and cos_sin_cache.stride(1) == 1
    assert q.stride(2) == 1 and k.stride(2) == 1 and v.stride(2) == 1 and dim % 2 == 0
    assert k_cache.shape == v_cache.shape and k_cache.shape[2:] == (n_kv, dim), (k_cache.shape, k.shape)
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    fp8 = check_kv_scales(k_cache, k_scale, v_scale)
    q_out = torch.empty(num_tokens, num_heads, dim, dtype=q.dtype, device=q.device)  # (T, H, D)
    if num_tokens == 0:
        return q_out
    half = dim // 2
    _rotary_store_kv_kernel[(num_tokens, num_heads + n_kv)](
        positions, q, k, v, q_out, cos_sin_cache, slot_mapping,
        k_cache, v_cache, k_scale if fp8 else k_cache, v_scale if fp8 else v_cache,
        num_heads, n_kv,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        q_out.stride(0), q_out.stride(1), cos_sin_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        HALF=half, BLOCK_H=triton.next_power_of_2(half), IS_NEOX=is_neox,
        KV_FP8=fp8, MIN_SCALE=KV_MIN_SCALE, **fp8_format(k_cache.dtype if fp8 else torch.float8_e4m3fn), **launch(),
    )
    return q_out
