"""Fused SiLU-and-multiply: (T, 2I) gate|up -> (T, I) silu(gate) * up, one read of each input."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["silu_and_mul"]


@triton.jit
def _silu_and_mul_kernel(
    x_ptr, out_ptr, inter, stride_xt, stride_ot,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_xt + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_xt + inter + cols, mask=mask, other=0.0).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * stride_ot + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:  # (T, 2I) -> (T, I)
    assert x.dim() == 2 and x.shape[1] % 2 == 0, x.shape
    assert x.stride(1) == 1, "last dim must be contiguous"
    num_tokens, inter = x.shape[0], x.shape[1] // 2
    out = torch.empty(num_tokens, inter, dtype=x.dtype, device=x.device)  # (T, I)
    if num_tokens == 0:
        return out
    block = min(triton.next_power_of_2(inter), 1024)
    grid = (num_tokens, triton.cdiv(inter, block))
    _silu_and_mul_kernel[grid](x, out, inter, x.stride(0), out.stride(0), BLOCK=block)
    return out
