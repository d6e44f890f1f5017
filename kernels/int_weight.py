"""Integer weight-only linears (W4A16 / W8A16) on the layout of kernels/reference.py's header.

What the three launchers share (each lives in the module of its name); worker/quant/int_kernels.py
picks among them per shape and batch:
- `int_weight_gemv`: one row. Each program owns BLOCK_N outputs and streams (BLOCK_W, BLOCK_N)
  tiles of words, contiguous along the outputs; nothing is unpacked to a tile: each value meets
  its x in a fused multiply-add. A tile may span groups (their scales are then read per row).
- `int_weight_gemm`: a few to a few hundred rows. Each program unpacks a (BLOCK_K, BLOCK_N)
  weight tile once (every row of words loaded P times, from L1) and feeds it to tensor cores for
  all BLOCK_M rows.
- `int_weight_dequant`: the dense weight, transposed (K, N), for cuBLAS when the batch is large
  enough that unpacking once costs less than unpacking per tile.
Both products may split K over SPLIT_K programs, which then add into a float32 output.

Unpacking without int-to-float conversions (a quarter-rate instruction): a value masked in place
and OR-ed into the mantissa of 2**23 is the float 2**23 + q * 2**s exactly while q's bits stay
below bit 23; the GEMV takes a word's low and high 16 bits apart, so each value costs one AND-OR,
one subtract and one multiply-add by x * 2**-s. Zero points and scales apply once per group of a
tile's row (a GEMM tile never straddles groups): sum_k (q_k - z) s x_k = s (sum_k q_k x_k - z sum_k x_k).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["value", "unpack_rows", "tile_fits", "check_layout", "INTERPRETED"]

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def value(half, j: tl.constexpr, BITS: tl.constexpr):
    # Value j of a 16-bit half, times 2**(BITS*j), as an exact float.
    mask: tl.constexpr = ((1 << BITS) - 1) << (BITS * j)
    return ((half & mask) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def unpack_rows(qw_ptr, k, n, K, N, BITS: tl.constexpr):
    # The (BK, BN) tile of channels k and outputs n as integer-valued floats: each row of words
    # is read once per value it holds (the repeats hit L1), shifted by that value's place.
    PER: tl.constexpr = 32 // BITS
    words = tl.load(qw_ptr + (k // PER).to(tl.int64)[:, None] * N + n[None, :],
                    mask=(k < K)[:, None] & (n < N)[None, :], other=0)  # (BK, BN)
    q = (words >> ((k % PER) * BITS)[:, None]) & ((1 << BITS) - 1)
    return (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


def tile_fits(block_k: int, group_size: int, in_features: int) -> bool:
    """A K tile of block_k channels never straddles two groups."""
    return group_size >= in_features or group_size % block_k == 0


def check_layout(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
           group_size: int, bits: int, block_k: int) -> tuple[int, int]:
    per = 32 // bits
    k, n = qweight.shape[0] * per, qweight.shape[1]
    assert x.dim() == 2 and x.shape[1] == k and x.stride(1) == 1, (tuple(x.shape), k)
    assert qweight.dtype == torch.int32 and qweight.is_contiguous() and bits in (4, 8)
    assert scales.shape == zeros.shape == (-(-k // group_size), n) and scales.is_contiguous() and zeros.is_contiguous()
    assert tile_fits(block_k, group_size, k), f"a {block_k}-channel tile straddles groups of {group_size}"
    return n, k
