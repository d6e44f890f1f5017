"""What the two paged attention kernels share: reading K/V tiles out of the paged cache, the checks
their launchers make on the paged inputs, and the dot precision they compute in.

A sequence's position n lives in block `block_tables[seq, n // PAGE]` at offset `n % PAGE`;
`page_slots` turns a tile of positions into (block, offset) pairs and `paged_tile` loads the
(N, D) tile of one KV head at those slots (zeros where masked). An FP8 cache keeps one scale per
(slot, KV head) beside the pages (worker/kv_cache.py): `paged_scales` loads a tile's (N,) scales
(`tile_scales` both of a key tile's), `fp8_dots` says how the kernels multiply over FP8 pages,
and `fp8_words_as_f16` turns FP8 values read as int32 words into float16 by moving bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["LOG2E", "page_slots", "paged_tile", "paged_scales", "scaled_scores", "window_or_all", "check_paged_inputs",
           "check_kv_scales", "dot_precision", "fp8_dots", "fp8_word_unit", "fp8_words_as_f16", "tile_scales"]

# Softmax runs in base 2 (exp2 is cheaper): `scaled_scores` folds log2(e) into the scores' scale.
LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr: Triton kernels may read only such globals


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


@triton.jit
def paged_scales(scale_ptr, blk, off, kv_head, stride_b, stride_s, n_mask):
    # Scales are (num_blocks, block_size, n_kv), contiguous: a KV head is the innermost index.
    return tl.load(scale_ptr + blk * stride_b + off * stride_s + kv_head, mask=n_mask, other=0.0).to(tl.float32)  # (N,)


@triton.jit
def tile_scales(k_scale_ptr, v_scale_ptr, bt_ptr, seq, stride_bt, n0, end, kv_head, stride_b, stride_s,
                PAGE: tl.constexpr, BLOCK_N: tl.constexpr):
    # The (N,) K and V scales of the key tile starting at n0 (zeros past `end`).
    # Offsets in int32: the launchers check that a scale tensor has fewer than 2**31 elements.
    n = n0 + tl.arange(0, BLOCK_N)
    n_mask = n < end
    blk = tl.load(bt_ptr + seq * stride_bt + n // PAGE, mask=n_mask, other=0)
    at = blk * stride_b + (n % PAGE) * stride_s + kv_head
    ks = tl.load(k_scale_ptr + at, mask=n_mask, other=0.0).to(tl.float32)
    vs = tl.load(v_scale_ptr + at, mask=n_mask, other=0.0).to(tl.float32)
    return ks, vs


@triton.jit
def fp8_words_as_f16(w, E4M3: tl.constexpr):
    # w: (N, D / 4) int32 words of an FP8 tile, byte j of word i the value of column 4i + j -> the
    # (N, D) float16 tile, by moving bits (exact): an e5m2 value is its float16's high byte; an
    # e4m3fn value's sign goes to bit 15 and its exponent and mantissa to bits 7..13, which reads
    # as 2**-8 times the value (exponent bias 7 against 15; subnormals land on float16's
    # subnormals). Integer ops keep the tile in 16 bits through shared memory: a plain FP8 -> f16
    # cast is moved past the layout change by the compiler, and then the value operand's bytes
    # are read from shared memory one at a time.
    u = w.to(tl.uint32, bitcast=True)
    if E4M3:
        even = ((u << 8) & 0x80008000) | ((u << 7) & 0x3F803F80)  # columns 4i (low half), 4i + 2 (high)
        odd = (u & 0x80008000) | ((u >> 1) & 0x3F803F80)  # columns 4i + 1, 4i + 3
    else:
        even = (u << 8) & 0xFF00FF00
        odd = u & 0xFF00FF00
    # (N, D / 4, 2, 2): [i, b, a] is column 4i + 2b + a (join stacks along a new last axis)
    x = tl.join(tl.join(even.to(tl.uint16), (even >> 16).to(tl.uint16)),
                tl.join(odd.to(tl.uint16), (odd >> 16).to(tl.uint16)))
    return tl.reshape(x, (w.shape[0], 4 * w.shape[1])).to(tl.float16, bitcast=True)


@triton.jit
def scaled_scores(s, scale, softcap, SOFTCAP: tl.constexpr):
    # q.k products -> softmax scores in log2 units; soft-capped as softcap * tanh(s * scale / softcap)
    # (tanh written through the sigmoid, which the interpreter and every backend have).
    if SOFTCAP:
        return (2.0 * tl.sigmoid(s * (2.0 * scale / softcap)) - 1.0) * (softcap * LOG2E)
    return s * (scale * LOG2E)


def window_or_all(window: int) -> int:
    # The kernels mask by the window unconditionally; no window is one longer than any sequence.
    assert window >= 0, window
    return window if window > 0 else 1 << 30


def check_paged_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
) -> bool:
    """Asserts the launchers' shared preconditions; True when the cache is FP8 (with scales)."""
    num_heads, dim = q.shape[1], q.shape[2]
    assert q.dim() == 3 and q.stride(2) == 1, q.shape
    assert k_cache.shape == v_cache.shape and k_cache.dim() == 4 and k_cache.shape[3] == dim, (k_cache.shape, q.shape)
    assert k_cache.stride(3) == 1 and v_cache.stride(3) == 1
    assert num_heads % k_cache.shape[2] == 0, (num_heads, k_cache.shape)
    fp8 = check_kv_scales(k_cache, k_scale, v_scale)
    assert k_cache.dtype == v_cache.dtype and (fp8 or q.dtype == k_cache.dtype), (q.dtype, k_cache.dtype)
    assert block_tables.dim() == 2 and block_tables.stride(1) == 1
    assert seq_lens.shape == (block_tables.shape[0],) and query_start_loc.shape == (block_tables.shape[0] + 1,)
    assert block_tables.dtype in (torch.int32, torch.int64) and seq_lens.dtype in (torch.int32, torch.int64)
    return fp8


def check_kv_scales(k_cache: torch.Tensor, k_scale: torch.Tensor | None, v_scale: torch.Tensor | None) -> bool:
    """True for an FP8 cache, whose scales must be (num_blocks, block_size, n_kv) and contiguous."""
    fp8 = k_cache.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
    if not fp8:
        assert k_scale is None and v_scale is None, "scales go with an FP8 cache only"
        return False
    assert k_scale is not None and v_scale is not None, "an FP8 cache needs its k/v scales"
    assert k_scale.shape == v_scale.shape == k_cache.shape[:3], (k_scale.shape, k_cache.shape)
    assert k_scale.is_contiguous() and v_scale.is_contiguous()
    assert k_scale.numel() < 2**31, "tile_scales indexes the scales in int32"
    return True


def dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs would run as TF32 (10-bit mantissa) by default: keep them exact.
    return "ieee" if dtype == torch.float32 else "tf32"


def fp8_dots(q_dtype: torch.dtype, kv_dtype: torch.dtype) -> dict[str, bool | float]:
    """Over FP8 pages, 16-bit queries multiply in float16 (FP8 converts to it exactly, in one
    instruction on Hopper). A value's scale goes on the probabilities, lifted by FP8_MAX (and
    divided out at the end) so that small scales times small probabilities stay in float16's
    normal range."""
    f16 = kv_dtype in (torch.float8_e4m3fn, torch.float8_e5m2) and q_dtype != torch.float32
    return {"DOT_F16": f16, "V_LIFT": torch.finfo(kv_dtype).max if f16 else 1.0}


def fp8_word_unit(kv_dtype: torch.dtype) -> float:
    """What `fp8_words_as_f16` reads a page value as, times its value: 2**-8 for e4m3fn, 1 for
    e5m2 (and for pages that are not FP8)."""
    return 2.0**-8 if kv_dtype == torch.float8_e4m3fn else 1.0

