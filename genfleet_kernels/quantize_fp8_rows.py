"""Dynamic per-token FP8 quantization of activations: x (M, K) -> FP8 rows and one scale per row.

Row m is stored as x[m] / s[m] with s[m] = amax(|x[m]|) / FP8_MAX (float32), the input that
torch._scaled_mm takes with per-row `scale_a`. One program per row: a pass for the row's amax,
a pass that writes it; the second pass reads the row back from L2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.fp8 import fp8_format, round_to_fp8_grid
from genfleet_kernels.reference import FP8_MIN_ROW_SCALE

__all__ = ["quantize_fp8_rows"]


@triton.jit
def _quantize_rows_kernel(
    x_ptr, out_ptr, scale_ptr, K, stride_xm, stride_om,
    FP8_MAX: tl.constexpr, MANTISSA: tl.constexpr, MIN_EXP: tl.constexpr, MIN_SCALE: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    amax = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)  # (BK,)
        x = tl.load(x_row + k, mask=k < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.maximum(tl.max(amax, 0) * (1.0 / FP8_MAX), MIN_SCALE)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + k, mask=k < K, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -FP8_MAX), FP8_MAX)
        q = round_to_fp8_grid(q, MANTISSA, MIN_EXP)
        tl.store(out_ptr + row * stride_om + k, q.to(out_ptr.dtype.element_ty), mask=k < K)
    tl.store(scale_ptr + row, scale)


def quantize_fp8_rows(
    x: torch.Tensor,  # (M, K) float32 / float16 / bfloat16
    dtype: torch.dtype = torch.float8_e4m3fn,
) -> tuple[torch.Tensor, torch.Tensor]:  # (M, K) in dtype, (M, 1) float32
    assert x.dim() == 2 and x.stride(1) == 1, (tuple(x.shape), x.stride())
    m, k = x.shape
    out = torch.empty(m, k, dtype=dtype, device=x.device)
    scale = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    if m:
        _quantize_rows_kernel[(m,)](
            x, out, scale, k, x.stride(0), out.stride(0),
            MIN_SCALE=FP8_MIN_ROW_SCALE, BLOCK_K=min(triton.next_power_of_2(k), 4096), num_warps=4,
            **fp8_format(dtype),
        )
    return out, scale
