"""RMSNorm with an optional fused residual add: one row per program, float32 statistics.

`offset` is added to the weight in float32 (Gemma stores its norm weights as w - 1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.pdl import launch, wait_then_release

__all__ = ["rms_norm"]


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    hidden, eps, offset,
    stride_xt, stride_rt, stride_ot, stride_rot,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    wait_then_release(PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * stride_xt + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_rt + cols, mask=mask, other=0.0)
        # The sum is rounded to the activation dtype before the norm, as the unfused add is.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_rot + cols, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / hidden
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + offset
    out = xf * tl.rsqrt(var + eps) * w
    tl.store(out_ptr + row * stride_ot + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor,  # (T, hidden)
    weight: torch.Tensor,  # (hidden,)
    eps: float,
    residual: torch.Tensor | None = None,  # (T, hidden)
    offset: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    assert x.dim() == 2 and weight.shape == (x.shape[1],), (x.shape, weight.shape)
    assert x.stride(1) == 1 and weight.is_contiguous()
    num_tokens, hidden = x.shape
    out = torch.empty_like(x)  # (T, hidden)
    block = triton.next_power_of_2(hidden)
    if residual is not None:
        assert residual.shape == x.shape and residual.stride(1) == 1 and residual.dtype == x.dtype
        res_out = torch.empty_like(x)  # (T, hidden)
        res, stride_r, stride_ro = residual, residual.stride(0), res_out.stride(0)
    else:
        res_out, res, stride_r, stride_ro = out, x, 0, 0
    if num_tokens:
        _rms_norm_kernel[(num_tokens,)](
            x, res, weight, out, res_out, hidden, eps, offset,
            x.stride(0), stride_r, out.stride(0), stride_ro,
            HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=min(max(block // 256, 1), 8), **launch(),
        )
    return (out, res_out) if residual is not None else out
