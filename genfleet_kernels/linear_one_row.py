"""y = x @ W.T (+ b) for one row x, or a few (up to MAX_ROWS): the matrix-vector products of batch-1
decoding and of a batch-1 verification step (its last token and drafts, worker/speculative/).

At one row, a linear layer is a pure read of W; cuBLAS reaches 80-87% of the card's copy
bandwidth on the Llama-3.1-8B qkv and down shapes. Here each program owns BLOCK_N output
features of one row and streams their rows of W in BLOCK_K-wide tiles, reducing in float32; no
split over K, so the result needs no second pass. The programs of one tile of W for every row
are launched next to each other (the row is the grid's fastest axis), so the rows after the
first read that tile from L2. Each row is computed exactly as it would be alone: a verification
row gets the bits a plain decode of the same token would, where cuBLAS at a few rows picks
another kernel (a GEMM, slower there too) and another order of sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.pdl import launch, wait_then_release

__all__ = ["linear_one_row", "MAX_ROWS"]

MAX_ROWS = 16  # the most rows `linear_one_row` takes: past it a GEMM reads W once for all of them


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, N, K, stride_wn, stride_xm,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    wait_then_release(PDL)
    m = tl.program_id(0)  # the row: the fastest axis, so one tile of W serves every row from L2
    x_ptr += m * stride_xm
    out_ptr += m * N
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    n_mask = n < N
    rows = n.to(tl.int64) * stride_wn
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)  # (BK,)
        k_mask = k < K
        x = tl.load(x_ptr + k, mask=k_mask, other=0.0).to(tl.float32)  # (BK,)
        w = tl.load(w_ptr + rows[:, None] + k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        acc += w.to(tl.float32) * x[None, :]  # (BN, BK)
    y = tl.sum(acc, 1)  # (BN,)
    if HAS_BIAS:
        y += tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + n, y.to(out_ptr.dtype.element_ty), mask=n_mask)


def linear_one_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   block_n: int = 8, block_k: int = 512, num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """x (M, K) with 1 <= M <= MAX_ROWS, weight (N, K) with unit stride along K, bias (N,) -> (M, N)
    in x's dtype."""
    assert x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS, f"1 to {MAX_ROWS} rows expected, got {tuple(x.shape)}"
    assert weight.dim() == 2 and weight.shape[1] == x.shape[1] and weight.stride(1) == 1, tuple(weight.shape)
    assert x.dtype == weight.dtype, (x.dtype, weight.dtype)
    n, k = weight.shape
    x = x.contiguous()
    out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)  # (M, N)
    grid = (x.shape[0], triton.cdiv(n, block_n))
    assert grid[1] < 2**16, f"{n} outputs in tiles of {block_n}: more tiles than a grid's second axis holds"
    _gemv_kernel[grid](
        x, weight, bias if bias is not None else weight, out, n, k, weight.stride(0), x.stride(0),
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages,
        **launch(),
    )
    return out
