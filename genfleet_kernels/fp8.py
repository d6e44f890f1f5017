"""FP8 helpers shared by the kernels that write FP8 (the KV store, the activation quantizer).

`round_to_fp8_grid` rounds in float32 to the nearest value of the FP8 format (ties to even), so
the cast that follows is exact: Triton's CPU interpreter rounds float8 casts wrongly (no carry
into the exponent), and this keeps every kernel bit-identical to torch's cast there and on the
GPU. `fp8_format(dtype)` gives a launcher the constexprs that describe the format.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = ["round_to_fp8_grid", "fp8_format"]

_MANTISSA_BITS = {torch.float8_e4m3fn: 3, torch.float8_e5m2: 2}


@triton.jit
def round_to_fp8_grid(y, MANTISSA: tl.constexpr, MIN_EXP: tl.constexpr):
    # y: float32 with |y| <= the format's max. Subnormals share MIN_EXP's step.
    a = tl.abs(y)
    exp = tl.maximum(((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, MIN_EXP)
    step = ((exp - MANTISSA + 127) << 23).to(tl.float32, bitcast=True)  # 2**(exp - MANTISSA)
    inv_step = ((127 - exp + MANTISSA) << 23).to(tl.float32, bitcast=True)
    magic = 12582912.0  # 1.5 * 2**23: adding and subtracting it rounds to an integer, ties to even
    r = ((a * inv_step + magic) - magic) * step
    return tl.where(y < 0, -r, r)  # on the magnitude, so what rounds to zero keeps its sign (-0.0) as torch's cast


def fp8_format(dtype: torch.dtype) -> dict[str, float | int]:
    """FP8_MAX, MANTISSA and MIN_EXP (of the smallest normal) of a float8 dtype."""
    info = torch.finfo(dtype)
    return {"FP8_MAX": info.max, "MANTISSA": _MANTISSA_BITS[dtype], "MIN_EXP": int(math.log2(info.smallest_normal))}
