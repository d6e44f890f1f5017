"""y = x @ (W * s).T (+ b) with one-byte weights: int8 or FP8 W (N, K), a float32 scale per output.

The weight-only path of the int8 and FP8 linears at small batch: the product reads each weight
byte once, converts it to x's dtype in registers and multiplies on tensor cores (M padded to
BLOCK_M), applying the scales to the (BLOCK_M, BLOCK_N) result. At one row this is a GEMV that
reads half the bytes of a bf16 weight. Program (n tile, m tile); no split over K.
One row (batch-1 decoding) has its own kernel: genfleet_kernels/w8_gemv.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["w8_linear", "W8_CONFIGS"]

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) that worker/quant times per shape.
W8_CONFIGS = ((16, 32, 256, 4, 4), (16, 64, 256, 4, 3), (16, 16, 512, 4, 3), (32, 64, 128, 4, 4), (64, 64, 128, 4, 3))


@triton.jit
def _w8_linear_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    n_mask = n < N
    m_mask = m < M
    x_rows = x_ptr + m.to(tl.int64)[:, None] * stride_xm  # (BM, 1)
    w_rows = w_ptr + n.to(tl.int64)[:, None] * stride_wn  # (BN, 1)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)  # (BK,)
        k_mask = k < K
        x = tl.load(x_rows + k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)  # (BM, BK)
        w = tl.load(w_rows + k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)  # (BN, BK)
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc, input_precision=DOT_PRECISION)  # (BM, BN)
    acc = acc * tl.load(s_ptr + n, mask=n_mask, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + m.to(tl.int64)[:, None] * stride_om + n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def w8_linear(
    x: torch.Tensor,  # (M, K) float32 / float16 / bfloat16
    weight: torch.Tensor,  # (N, K) int8 or float8, unit stride along K
    scale: torch.Tensor,  # (N,) float32
    bias: torch.Tensor | None = None,  # (N,)
    config: tuple[int, int, int, int, int] = W8_CONFIGS[0],
) -> torch.Tensor:  # (M, N) in x's dtype
    assert x.dim() == 2 and weight.dim() == 2 and weight.shape[1] == x.shape[1], (tuple(x.shape), tuple(weight.shape))
    assert weight.element_size() == 1 and weight.stride(1) == 1, (weight.dtype, weight.stride())
    assert scale.shape == (weight.shape[0],) and scale.dtype == torch.float32, (tuple(scale.shape), scale.dtype)
    block_m, block_n, block_k, warps, stages = config
    m, k = x.shape
    n = weight.shape[0]
    x = x if x.stride(1) == 1 else x.contiguous()
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    _w8_linear_kernel[grid](
        x, weight, scale, bias if bias is not None else scale, out, m, n, k, x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )
    return out

