"""y = x @ (W * s).T (+ b) for one row x and one-byte weights (int8 or FP8 W (N, K), float32 s (N,)).

The batch-1 decode path of the one-byte layouts: no tile padded to 16 rows as in
kernels/w8_linear.py; each program streams BLOCK_N rows of W, converts each byte in registers and
reduces in float32 with FMAs, as kernels/linear_one_row.py does for bf16. No split over K.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["w8_gemv", "GEMV_CONFIGS"]

# (BLOCK_N, BLOCK_K, warps, stages) that worker/quant/w8.py times per shape.
GEMV_CONFIGS = ((8, 1024, 8, 3), (4, 1024, 4, 4), (16, 512, 8, 3), (8, 2048, 8, 2), (2, 2048, 4, 4))


@triton.jit
def _w8_gemv_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, N, K, stride_wn,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    n_mask = n < N
    rows = w_ptr + n.to(tl.int64)[:, None] * stride_wn  # (BN, 1)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)  # (BK,)
        k_mask = k < K
        x = tl.load(x_ptr + k, mask=k_mask, other=0.0).to(tl.float32)  # (BK,)
        w = tl.load(rows + k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)  # (BN, BK)
        acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, 1) * tl.load(s_ptr + n, mask=n_mask, other=0.0)  # (BN,)
    if HAS_BIAS:
        y += tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + n, y.to(out_ptr.dtype.element_ty), mask=n_mask)


def w8_gemv(
    x: torch.Tensor,  # (1, K)
    weight: torch.Tensor,  # (N, K) int8 or float8, unit stride along K
    scale: torch.Tensor,  # (N,) float32
    bias: torch.Tensor | None = None,  # (N,)
    config: tuple[int, int, int, int] = GEMV_CONFIGS[0],
) -> torch.Tensor:  # (1, N) in x's dtype
    assert x.dim() == 2 and x.shape[0] == 1 and weight.shape[1] == x.shape[1], (tuple(x.shape), tuple(weight.shape))
    assert weight.element_size() == 1 and weight.stride(1) == 1, (weight.dtype, weight.stride())
    assert scale.shape == (weight.shape[0],) and scale.dtype == torch.float32, (tuple(scale.shape), scale.dtype)
    block_n, block_k, warps, stages = config
    n, k = weight.shape
    x = x.contiguous()
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    _w8_gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, scale, bias if bias is not None else scale, out, n, k, weight.stride(0),
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )
    return out
