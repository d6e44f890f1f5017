"""Scatter each new token's K and V into its cache slot; a negative slot is skipped (padding).

An FP8 cache (k_scale/v_scale given) stores each (token, KV head) row as `x / s` in FP8 with
s = amax(|x|) / FP8_MAX, rounded to float16, in the scale tensors: reading `fp8 * s` back loses
only FP8's rounding (genfleet_kernels/reference.py `quantize_kv_rows` is the same arithmetic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.fp8 import fp8_format, round_to_fp8_grid
from genfleet_kernels.paged_kv import check_kv_scales
from genfleet_kernels.reference import KV_MIN_SCALE

__all__ = ["store_kv"]


@triton.jit
def _quantize_row(x, mask, FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr, MANTISSA: tl.constexpr, MIN_EXP: tl.constexpr):
    xf = x.to(tl.float32)
    amax = tl.max(tl.where(mask, tl.abs(xf), 0.0), 0)
    scale = tl.minimum(tl.maximum(amax * (1.0 / FP8_MAX), MIN_SCALE), 65504.0).to(tl.float16).to(tl.float32)
    q = tl.minimum(tl.maximum(tl.math.div_rn(xf, scale), -FP8_MAX), FP8_MAX)
    return round_to_fp8_grid(q, MANTISSA, MIN_EXP), scale


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, k_scale_ptr, v_scale_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cs, stride_ch, n_kv,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    KV_FP8: tl.constexpr, FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr, MANTISSA: tl.constexpr, MIN_EXP: tl.constexpr,
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
    if KV_FP8:
        k, k_scale = _quantize_row(k, mask, FP8_MAX, MIN_SCALE, MANTISSA, MIN_EXP)
        v, v_scale = _quantize_row(v, mask, FP8_MAX, MIN_SCALE, MANTISSA, MIN_EXP)
        scale_at = slot.to(tl.int64) * n_kv + head
        tl.store(k_scale_ptr + scale_at, k_scale.to(k_scale_ptr.dtype.element_ty))
        tl.store(v_scale_ptr + scale_at, v_scale.to(v_scale_ptr.dtype.element_ty))
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(
    k: torch.Tensor,  # (T, n_kv, D)
    v: torch.Tensor,  # (T, n_kv, D)
    k_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    v_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    slot_mapping: torch.Tensor,  # (T,) int64; negative = skip
    k_scale: torch.Tensor | None = None,  # (num_blocks, block_size, n_kv) float16: FP8 caches only
    v_scale: torch.Tensor | None = None,  # (num_blocks, block_size, n_kv) float16
) -> None:
    num_tokens, n_kv, dim = k.shape
    assert v.shape == k.shape and slot_mapping.shape == (num_tokens,), (k.shape, v.shape, slot_mapping.shape)
    assert k_cache.shape == v_cache.shape and k_cache.shape[2:] == (n_kv, dim), (k_cache.shape, k.shape)
    assert k.stride(2) == 1 and v.stride(2) == 1
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    assert slot_mapping.dtype in (torch.int64, torch.int32)
    fp8 = check_kv_scales(k_cache, k_scale, v_scale)
    if num_tokens == 0:
        return
    _store_kv_kernel[(num_tokens, n_kv)](
        k, v, k_cache, v_cache, slot_mapping,
        k_scale if fp8 else k_cache, v_scale if fp8 else v_cache,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(1), k_cache.stride(2), n_kv,
        HEAD_DIM=dim, BLOCK_D=triton.next_power_of_2(dim),
        KV_FP8=fp8, MIN_SCALE=KV_MIN_SCALE, **fp8_format(k_cache.dtype if fp8 else torch.float8_e4m3fn),
    )

