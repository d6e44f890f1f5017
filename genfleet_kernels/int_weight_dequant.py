"""`int_weight_dequant`: the integer weight-only layout as a dense weight (genfleet_kernels/int_weight.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.int_weight_gemm import weight_tile

__all__ = ["int_weight_dequant"]


@triton.jit
def _dequant_kernel(qw_ptr, s_ptr, z_ptr, out_ptr, N, K, NG, G, BITS: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_W: tl.constexpr):
    PER: tl.constexpr = 32 // BITS
    kw = K // PER
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)  # (BW,)
    mask = (n < N)[:, None] & (w < kw)[None, :]
    n64 = n.to(tl.int64)
    words = tl.load(qw_ptr + n64[:, None] * kw + w[None, :], mask=mask, other=0)
    at = n64[:, None] * NG + ((w * PER) // G)[None, :]  # (BN, BW): each word's group
    s = tl.load(s_ptr + at, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + at, mask=mask, other=0.0).to(tl.float32)
    dense = weight_tile(words, s, z * s, BLOCK_N, BLOCK_W, BITS, False)  # (BN, BK)
    k = tl.program_id(1) * BLOCK_W * PER + tl.arange(0, BLOCK_W * PER)  # (BK,)
    tl.store(out_ptr + n64[:, None] * K + k[None, :], dense.to(out_ptr.dtype.element_ty),
             mask=(n < N)[:, None] & (k < K)[None, :])


def int_weight_dequant(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, bits: int,
                       dtype: torch.dtype, block_n: int = 32, block_w: int = 32) -> torch.Tensor:
    """The dense weight (N, K) in `dtype`, so F.linear(x, it) is the linear."""
    n, k = qweight.shape[0], qweight.shape[1] * 32 // bits
    out = torch.empty(n, k, dtype=dtype, device=qweight.device)
    grid = (triton.cdiv(n, block_n), triton.cdiv(qweight.shape[1], block_w))
    _dequant_kernel[grid](qweight, scales, zeros, out, n, k, scales.shape[1], min(group_size, k), BITS=bits,
                          BLOCK_N=block_n, BLOCK_W=block_w)
    return out
