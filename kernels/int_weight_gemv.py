"""`int_weight_gemv`: one row of x times the integer weight-only layout (kernels/int_weight.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.int_weight import check_layout, tile_fits, value

__all__ = ["int_weight_gemv"]


@triton.jit
def _gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, N, K, G,
    BITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, ROW_GROUPS: tl.constexpr,
):
    # ROW_GROUPS: the tile spans several groups, so scales and zeros are read per row of words
    # (each row's run along the outputs is contiguous; the rows of one group hit the same lines).
    PER: tl.constexpr = 32 // BITS
    HALF: tl.constexpr = PER // 2
    pid_k = tl.program_id(1)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    n_mask = n < N
    num_rows = K // PER
    acc = tl.zeros([BLOCK_W, BLOCK_N], tl.float32)
    for r0 in range(pid_k * BLOCK_W, num_rows, BLOCK_W * SPLIT_K):
        r = r0 + tl.arange(0, BLOCK_W)  # (BW,) word rows
        r_mask = r < num_rows
        words = tl.load(qw_ptr + r.to(tl.int64)[:, None] * N + n[None, :], mask=r_mask[:, None] & n_mask[None, :],
                        other=0)  # (BW, BN)
        if ROW_GROUPS:
            at = ((r * PER) // G).to(tl.int64)[:, None] * N + n[None, :]  # (BW, BN)
            s = tl.load(s_ptr + at, mask=r_mask[:, None] & n_mask[None, :], other=0.0).to(tl.float32)
            z = tl.load(z_ptr + at, mask=r_mask[:, None] & n_mask[None, :], other=0.0).to(tl.float32)
        else:
            g = (r0 * PER) // G  # the tile's one group
            s = tl.load(s_ptr + g * N + n, mask=n_mask, other=0.0).to(tl.float32)[None, :]  # (1, BN)
            z = tl.load(z_ptr + g * N + n, mask=n_mask, other=0.0).to(tl.float32)[None, :]  # (1, BN)
        hi = words >> 16
        part = tl.zeros([BLOCK_W, BLOCK_N], tl.float32)
        xsum = tl.zeros([BLOCK_W], tl.float32)
        for i in tl.static_range(PER):
            xi = tl.load(x_ptr + r * PER + i, mask=r_mask, other=0.0).to(tl.float32)  # (BW,)
            xsum += xi
            if i < HALF:
                v = value(words, i, BITS)
            else:
                v = value(hi, i - HALF, BITS)
            part += v * (xi * (1.0 / (1 << (BITS * (i % HALF)))))[:, None]
        acc += part * s - xsum[:, None] * (z * s)
    y = tl.sum(acc, 0)  # (BN,)
    if HAS_BIAS:
        bias = tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
        y += tl.where(pid_k == 0, bias, 0.0)
    if SPLIT_K == 1:
        tl.store(out_ptr + n, y.to(out_ptr.dtype.element_ty), mask=n_mask)
    else:
        tl.atomic_add(out_ptr + n, y, mask=n_mask)


def int_weight_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    group_size: int, bits: int, bias: torch.Tensor | None = None, block_n: int = 64,
                    block_w: int = 16, split_k: int = 1, num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """x (1, K) -> (1, N) in x's dtype."""
    assert x.shape[0] == 1, f"one row expected, got {tuple(x.shape)}"
    row_groups = not tile_fits(block_w * 32 // bits, group_size, x.shape[1])
    n, k = check_layout(x, qweight, scales, zeros, group_size, bits, 32 // bits if row_groups else block_w * 32 // bits)
    out = torch.empty(1, n, dtype=x.dtype, device=x.device) if split_k == 1 else \
        torch.zeros(1, n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, block_n), split_k)
    _gemv_kernel[grid](
        x, qweight, scales, zeros, bias if bias is not None else scales, out, n, k, min(group_size, k),
        BITS=bits, BLOCK_N=block_n, BLOCK_W=block_w, SPLIT_K=split_k, HAS_BIAS=bias is not None,
        ROW_GROUPS=row_groups, num_warps=num_warps, num_stages=num_stages,
    )
    return out if split_k == 1 else out.to(x.dtype)
