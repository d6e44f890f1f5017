"""`int_weight_gemm`: rows of x times the integer weight-only layout on tensor cores (kernels/int_weight.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.int_weight import INTERPRETED, check_layout, unpack_rows

__all__ = ["int_weight_gemm"]


@triton.jit
def _gemm_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, M, N, K, G, stride_xm, stride_om,
    BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
):
    pid_k = tl.program_id(2)
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    m_mask, n_mask = m < M, n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        k = k0 + tl.arange(0, BLOCK_K)  # (BK,)
        q = unpack_rows(qw_ptr, k, n, K, N, BITS)  # (BK, BN)
        x = tl.load(x_ptr + m[:, None].to(tl.int64) * stride_xm + k[None, :],
                    mask=m_mask[:, None] & (k < K)[None, :], other=0.0)  # (BM, BK)
        g = k0 // G
        s = tl.load(s_ptr + g * N + n, mask=n_mask, other=0.0).to(tl.float32)  # (BN,)
        z = tl.load(z_ptr + g * N + n, mask=n_mask, other=0.0).to(tl.float32)  # (BN,)
        if IEEE:
            d = tl.dot(x.to(tl.float32), q, input_precision="ieee")  # (BM, BN)
        else:
            d = tl.dot(x, q.to(x.dtype))  # (BM, BN); q's integers are exact in 16-bit floats
        xsum = tl.sum(x.to(tl.float32), 1)  # (BM,)
        acc += (d - xsum[:, None] * z[None, :]) * s[None, :]
    if HAS_BIAS:
        bias = tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
        acc += tl.where(pid_k == 0, bias, 0.0)[None, :]
    ptrs = out_ptr + m[:, None].to(tl.int64) * stride_om + n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(ptrs, acc, mask=mask)


def int_weight_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    group_size: int, bits: int, bias: torch.Tensor | None = None,
                    block_m: int = 16, block_n: int = 64, block_k: int = 64, split_k: int = 1,
                    num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """x (M, K) -> (M, N) in x's dtype."""
    n, k = check_layout(x, qweight, scales, zeros, group_size, bits, block_k)
    m = x.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device) if split_k == 1 else \
        torch.zeros(m, n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), split_k)
    _gemm_kernel[grid](
        x, qweight, scales, zeros, bias if bias is not None else scales, out, m, n, k, min(group_size, k),
        x.stride(0), out.stride(0),
        BITS=bits, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k,
        # NOTE(q4): Triton's CPU interpreter multiplies bf16 dot operands as raw bits: float32 there.
        HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32 or INTERPRETED, num_warps=num_warps,
        num_stages=num_stages,
    )
    return out if split_k == 1 else out.to(x.dtype)
