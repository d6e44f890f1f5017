"""Fused gated activations: (T, 2I) gate|up -> (T, I) act(gate) * up, one read of each input.

`silu_and_mul` (Llama's SwiGLU) and `gelu_tanh_and_mul` (Gemma's GeGLU, GELU's tanh form) are one
kernel with the activation a constexpr.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.pdl import launch, wait_then_release

__all__ = ["silu_and_mul", "gelu_tanh_and_mul"]

@triton.jit
def _act_and_mul_kernel(
    x_ptr, out_ptr, inter, stride_xt, stride_ot,
    BLOCK: tl.constexpr, GELU_TANH: tl.constexpr, PDL: tl.constexpr,
):
    wait_then_release(PDL)
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_xt + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_xt + inter + cols, mask=mask, other=0.0).to(tl.float32)
    if GELU_TANH:  # 0.5 x (1 + tanh(z)) = x * sigmoid(2z), z = sqrt(2/pi) (x + 0.044715 x^3); 2 sqrt(2/pi) inline
        act = gate * tl.sigmoid((gate + 0.044715 * gate * gate * gate) * 1.5957691216057308)
    else:
        act = gate * tl.sigmoid(gate)
    tl.store(out_ptr + row * stride_ot + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:  # (T, 2I) -> (T, I)
    return _act_and_mul(x, gelu_tanh=False)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:  # (T, 2I) -> (T, I)
    return _act_and_mul(x, gelu_tanh=True)


def _act_and_mul(x: torch.Tensor, gelu_tanh: bool) -> torch.Tensor:
    assert x.dim() == 2 and x.shape[1] % 2 == 0, x.shape
    assert x.stride(1) == 1, "last dim must be contiguous"
    num_tokens, inter = x.shape[0], x.shape[1] // 2
    out = torch.empty(num_tokens, inter, dtype=x.dtype, device=x.device)  # (T, I)
    if num_tokens == 0:
        return out
    block = min(triton.next_power_of_2(inter), 1024)
    grid = (num_tokens, triton.cdiv(inter, block))
    _act_and_mul_kernel[grid](x, out, inter, x.stride(0), out.stride(0), BLOCK=block, GELU_TANH=gelu_tanh, **launch())
    return out
