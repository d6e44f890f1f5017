"""y = x @ W.T (+ b) for one row x and 4-bit codebook weights (bitsandbytes NF4 / FP4).

The layout is genfleet_kernels/dequantize_4bit.py's; each program streams BLOCK_N rows of packed bytes,
looks both nibbles up in the 16-entry code, scales them by their block's absmax and reduces in
float32 with FMAs against the even and odd elements of x. W is never materialized.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.dequantize_4bit import lookup_4bit

__all__ = ["lut4_gemv"]


@triton.jit
def _lut4_gemv_kernel(
    x_ptr, packed_ptr, absmax_ptr, code_ptr, b_ptr, out_ptr, N, HALF_K, stride_pn, stride_an,
    HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    n_mask = n < N
    n64 = n.to(tl.int64)[:, None]
    acc = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
    for c0 in range(0, HALF_K, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)  # (BC,)
        c_mask = c < HALF_K
        mask = n_mask[:, None] & c_mask[None, :]
        x_even = tl.load(x_ptr + 2 * c, mask=c_mask, other=0.0).to(tl.float32)  # (BC,)
        x_odd = tl.load(x_ptr + 2 * c + 1, mask=c_mask, other=0.0).to(tl.float32)
        packed = tl.load(packed_ptr + n64 * stride_pn + c[None, :], mask=mask, other=0)  # (BN, BC)
        scale = tl.load(absmax_ptr + n64 * stride_an + (2 * c[None, :]) // BLOCK, mask=mask, other=0.0)
        hi, lo = lookup_4bit(packed, code_ptr, scale)
        acc += hi * x_even[None, :] + lo * x_odd[None, :]
    y = tl.sum(acc, 1)  # (BN,)
    if HAS_BIAS:
        y += tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + n, y.to(out_ptr.dtype.element_ty), mask=n_mask)


def lut4_gemv(
    x: torch.Tensor,  # (1, K)
    packed: torch.Tensor,  # (N, K / 2) uint8
    absmax: torch.Tensor,  # (N, K / BLOCK) float32
    code: torch.Tensor,  # (16,) float32
    bias: torch.Tensor | None = None,  # (N,)
) -> torch.Tensor:  # (1, N) in x's dtype
    n, half = packed.shape
    assert x.dim() == 2 and x.shape == (1, 2 * half), (tuple(x.shape), tuple(packed.shape))
    assert packed.dtype == torch.uint8 and packed.stride(1) == 1 and absmax.dtype == torch.float32
    x = x.contiguous()
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    block_n, block_c = 8, 256
    _lut4_gemv_kernel[(triton.cdiv(n, block_n),)](
        x, packed, absmax, code, bias if bias is not None else absmax, out, n, half, packed.stride(0), absmax.stride(0),
        HAS_BIAS=bias is not None, BLOCK=2 * half // absmax.shape[1], BLOCK_N=block_n, BLOCK_C=block_c,
        num_warps=4, num_stages=3,
    )
    return out
