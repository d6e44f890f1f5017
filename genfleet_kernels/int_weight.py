"""Integer weight-only linears (W4A16 / W8A16) on the layout of genfleet_kernels/reference.py's header.

The layout: `qweight` (N, K / P) int32, each output's words contiguous along K, so a program
streams long contiguous runs of one row; scales and zeros (N, NG) follow the same rows. What the three launchers share (each lives in the module of its name);
worker/quant/int_kernels.py picks among them per shape and batch:
- `int_weight_gemv`: one row, on CUDA cores. Each program owns BLOCK_N outputs and streams
  (BLOCK_N, BLOCK_W) tiles of words; nothing is unpacked to a tile: each value meets its x in a
  fused multiply-add, and zero points and scales apply once per word.
- `int_weight_gemm`: a few to a few hundred rows, on tensor cores. Each program unpacks a
  (BLOCK_N, BLOCK_K) weight tile once into registers and feeds it to tl.dot for all BLOCK_M rows;
  with SWAP the weight is the dot's left operand (BLOCK_N of 64 or more fills the tensor cores'
  rows while BLOCK_M is as small as the batch).
- `int_weight_dequant`: the dense weight (N, K) for cuBLAS when the batch is large enough that
  unpacking once costs less than unpacking per tile.
Both products may split K over SPLIT_K programs, summed in the same launch (genfleet_kernels/split_k.py).

Unpacking without int-to-float conversions (a quarter-rate instruction): a value masked in place
and OR-ed into the mantissa of 2**23 is the float 2**23 + q * 2**s exactly while q's bits stay
below bit 23. The GEMV takes a word's low and high 16 bits apart, so each value costs one AND-OR,
one subtract and one multiply-add by x * 2**-s; the GEMM shifts each value down first, so the
float is q itself (or, through inline PTX for 4 bits, bf16 128 + q straight from an AND-OR).
Zero points and scales are applied once per group of a tile's row where the tile lies in one
group: sum_k (q_k - z) s x_k = s (sum_k q_k x_k - z sum_k x_k).

`unpack_rows` and `tile_fits` read the transposed layout that quantized MoE experts keep
(genfleet_kernels/fused_moe.py).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["value", "plane", "planes_bf16", "tile_groups", "check_layout", "unpack_rows", "tile_fits", "INTERPRETED"]

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def value(half, j: tl.constexpr, BITS: tl.constexpr, magic):
    # Value j of a 16-bit half (int32 or uint32), times 2**(BITS*j), as an exact float. magic: 2**23's
    # bits (0x4B000000) as a run-time value, so it lives in a register and the AND-OR (one LOP3, which
    # takes one immediate) gets the mask as its immediate instead of rebuilding it before every use.
    mask: tl.constexpr = ((1 << BITS) - 1) << (BITS * j)
    return ((half & mask) | magic).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def plane(words, i: tl.constexpr, BITS: tl.constexpr):
    # Value i of every word, as an exact float.
    return (((words >> (BITS * i)) & ((1 << BITS) - 1)) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def planes_bf16(words):
    # The 8 values of every 4-bit word as bfloat16 128 + q, exact (q fills the low mantissa bits of
    # 128.0 = 0x4300), two values per AND-OR: a shift, a LOP3 and half a byte permute per value.
    # Two words per instance: output register p holds value p of the first word (low half) and of
    # the second (high half). PTX: not for Triton's CPU interpreter.
    return tl.inline_asm_elementwise(
        asm="""
        {
        .reg .b32 a<4>, b<4>;
        lop3.b32 a0, $8, 0x000f000f, 0x43004300, 0xea;
        lop3.b32 b0, $9, 0x000f000f, 0x43004300, 0xea;
        shr.u32 a1, $8, 4;
        shr.u32 b1, $9, 4;
        shr.u32 a2, $8, 8;
        shr.u32 b2, $9, 8;
        shr.u32 a3, $8, 12;
        shr.u32 b3, $9, 12;
        lop3.b32 a1, a1, 0x000f000f, 0x43004300, 0xea;
        lop3.b32 b1, b1, 0x000f000f, 0x43004300, 0xea;
        lop3.b32 a2, a2, 0x000f000f, 0x43004300, 0xea;
        lop3.b32 b2, b2, 0x000f000f, 0x43004300, 0xea;
        lop3.b32 a3, a3, 0x000f000f, 0x43004300, 0xea;
        lop3.b32 b3, b3, 0x000f000f, 0x43004300, 0xea;
        prmt.b32 $0, a0, b0, 0x5410;
        prmt.b32 $4, a0, b0, 0x7632;
        prmt.b32 $1, a1, b1, 0x5410;
        prmt.b32 $5, a1, b1, 0x7632;
        prmt.b32 $2, a2, b2, 0x5410;
        prmt.b32 $6, a2, b2, 0x7632;
        prmt.b32 $3, a3, b3, 0x5410;
        prmt.b32 $7, a3, b3, 0x7632;
        }
        """,
        constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r",
        args=[words],
        dtype=(tl.bfloat16,) * 8,
        is_pure=True,
        pack=2,
    )


@triton.jit
def unpack_rows(qw_ptr, k, n, K, N, BITS: tl.constexpr):
    # The transposed layout of quantized MoE experts (words (K / P, N), genfleet_kernels/reference.py):
    # the (BK, BN) tile of channels k and outputs n as integer-valued floats; each row of words is
    # read once per value it holds (the repeats hit L1), shifted by that value's place.
    PER: tl.constexpr = 32 // BITS
    words = tl.load(qw_ptr + (k // PER).to(tl.int64)[:, None] * N + n[None, :],
                    mask=(k < K)[:, None] & (n < N)[None, :], other=0)  # (BK, BN)
    q = (words >> ((k % PER) * BITS)[:, None]) & ((1 << BITS) - 1)
    return (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


def tile_fits(block_k: int, group_size: int, in_features: int) -> bool:
    """A K tile of block_k channels never straddles two groups."""
    return group_size >= in_features or group_size % block_k == 0


def tile_groups(block_k: int, group_size: int, in_features: int, bits: int) -> tuple[int, int] | None:
    """How a K tile of block_k channels meets the groups: (groups it spans, words per group in it),
    (1, all its words) when it lies inside one group; None when it would cut a group."""
    per = 32 // bits
    if group_size >= in_features or group_size % block_k == 0:
        return 1, block_k // per
    if block_k % group_size == 0:
        return block_k // group_size, group_size // per
    return None


def check_layout(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, bits: int) -> tuple[int, int]:
    per = 32 // bits
    n, k = qweight.shape[0], qweight.shape[1] * per
    assert x.dim() == 2 and x.shape[1] == k and x.stride(1) == 1, (tuple(x.shape), k)
    assert qweight.dtype == torch.int32 and qweight.is_contiguous() and bits in (4, 8)
    assert scales.shape == zeros.shape == (n, -(-k // group_size)) and scales.is_contiguous() and zeros.is_contiguous()
    return n, k
