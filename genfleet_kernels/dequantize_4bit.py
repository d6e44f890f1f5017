"""4-bit codebook weights (bitsandbytes NF4 / FP4): their layout, the nibble lookup, and a dequantize kernel.

Layout (genfleet_kernels/reference.py `quantize_4bit`): `packed` uint8 (N, K / 2), weight 2j of a row in
the high nibble of byte j and 2j + 1 in the low one; `absmax` float32 (N, K / BLOCK); `code`
float32 (16,); W[n, k] = code[index] * absmax[n, k // BLOCK]. The values are not evenly spaced,
so the integer layout (W = (q - z) * s) cannot hold them: each index is looked up in the 16-entry
code (a gather that stays in L1). `dequantize_4bit` writes W in the activations' dtype for a dense
matmul (large batches); genfleet_kernels/lut4_gemv.py multiplies one row without materializing W.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["dequantize_4bit", "lookup_4bit"]


@triton.jit
def lookup_4bit(packed, code_ptr, scale):
    # (R, C) bytes -> the (R, C) weights of their high and low nibbles, scaled.
    p = packed.to(tl.int32)
    hi = tl.load(code_ptr + (p >> 4)) * scale
    lo = tl.load(code_ptr + (p & 15)) * scale
    return hi, lo


@triton.jit
def _dequantize_4bit_kernel(
    packed_ptr, absmax_ptr, code_ptr, out_ptr, N, HALF_K, stride_pn, stride_an, stride_on,
    BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # (BC,) byte columns
    mask = (n < N)[:, None] & (c < HALF_K)[None, :]
    n64 = n.to(tl.int64)[:, None]
    packed = tl.load(packed_ptr + n64 * stride_pn + c[None, :], mask=mask, other=0)  # (BN, BC)
    scale = tl.load(absmax_ptr + n64 * stride_an + (2 * c[None, :]) // BLOCK, mask=mask, other=0.0)  # (BN, BC)
    hi, lo = lookup_4bit(packed, code_ptr, scale)
    out = out_ptr + n64 * stride_on + 2 * c[None, :]
    tl.store(out, hi.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out + 1, lo.to(out_ptr.dtype.element_ty), mask=mask)


def dequantize_4bit(
    packed: torch.Tensor,  # (N, K / 2) uint8
    absmax: torch.Tensor,  # (N, K / BLOCK) float32
    code: torch.Tensor,  # (16,) float32
    dtype: torch.dtype,
) -> torch.Tensor:  # (N, K) in dtype
    n, half = packed.shape
    assert packed.dtype == torch.uint8 and packed.stride(1) == 1, (packed.dtype, packed.stride())
    assert absmax.dtype == torch.float32 and absmax.shape[0] == n and (2 * half) % absmax.shape[1] == 0
    assert code.shape == (16,) and code.dtype == torch.float32
    out = torch.empty(n, 2 * half, dtype=dtype, device=packed.device)
    block_n, block_c = 16, 128
    _dequantize_4bit_kernel[(triton.cdiv(n, block_n), triton.cdiv(half, block_c))](
        packed, absmax, code, out, n, half, packed.stride(0), absmax.stride(0), out.stride(0),
        BLOCK=2 * half // absmax.shape[1], BLOCK_N=block_n, BLOCK_C=block_c,
    )
    return out

