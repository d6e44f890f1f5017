"""`int_weight_dequant`: the integer weight-only layout as a dense transposed weight (kernels/int_weight.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.int_weight import tile_fits, unpack_rows

__all__ = ["int_weight_dequant"]


@triton.jit
def _dequant_kernel(qw_ptr, s_ptr, z_ptr, out_ptr, N, K, G, BITS: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    k0 = tl.program_id(1) * BLOCK_K
    k = k0 + tl.arange(0, BLOCK_K)  # (BK,)
    q = unpack_rows(qw_ptr, k, n, K, N, BITS)  # (BK, BN)
    n_mask = n < N
    s = tl.load(s_ptr + (k0 // G) * N + n, mask=n_mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + (k0 // G) * N + n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + k.to(tl.int64)[:, None] * N + n[None, :], ((q - z[None, :]) * s[None, :]).to(out_ptr.dtype.element_ty),
             mask=(k < K)[:, None] & n_mask[None, :])


def int_weight_dequant(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, bits: int,
                       dtype: torch.dtype, block_n: int = 64, block_k: int = 32) -> torch.Tensor:
    """The dense weight, transposed: (K, N) in `dtype`, so x @ it is the linear."""
    k, n = qweight.shape[0] * 32 // bits, qweight.shape[1]
    assert tile_fits(block_k, group_size, k)
    out = torch.empty(k, n, dtype=dtype, device=qweight.device)
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    _dequant_kernel[grid](qweight, scales, zeros, out, n, k, min(group_size, k), BITS=bits, BLOCK_N=block_n,
                          BLOCK_K=block_k)
    return out
