"""The asymmetric min-max integer grid of a group of weights, and rounding onto it.

A group of input channels is stored as W = (q - z) * s: integer codes q and zero point z in
[0, 2**bits), s in the checkpoint's scale dtype (fp16 for AWQ and GPTQ). The group's range always
holds 0, as an integer zero point requires. The zero point is taken against the scale as stored,
so the dequantized weights sit on the grid the checkpoint describes.

One definition for the AWQ search's loss (load/awq_search.py), GPTQ's groups (load/gptq.py) and
the tests' round-to-nearest quantizer (tests/worker/quant/rtn.py).
"""

from __future__ import annotations

import torch

__all__ = ["asymmetric_grid", "round_to_grid", "fake_quantize"]


def asymmetric_grid(groups: torch.Tensor, bits: int, scale_dtype: torch.dtype = torch.float16,
                    *, min_zero: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., G) -> scale (...) in `scale_dtype`, zero point (...) int64 in [min_zero, 2**bits).
    `min_zero`: the smallest zero point the format can hold (GPTQ v1 stores z - 1, so never 0)."""
    top = 2**bits - 1
    lo, hi = groups.amin(-1).clamp(max=0), groups.amax(-1).clamp(min=0)  # (...)
    scale = ((hi - lo) / top).clamp(min=1e-6).to(scale_dtype)  # (...) as the checkpoint stores it
    zero = torch.round(-lo / scale.to(lo.dtype)).long().clamp(min_zero, top)  # (...)
    return scale, zero


def round_to_grid(values: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """The nearest code of each value, int64 in [0, 2**bits); `scale` and `zero` broadcast to `values`."""
    return (torch.round(values / scale.to(values.dtype)).long() + zero).clamp(0, 2**bits - 1)


def fake_quantize(w: torch.Tensor, group_size: int, bits: int = 4) -> torch.Tensor:  # (N, K) -> (N, K) float32
    """Round to nearest and back, per group of `group_size` input channels with fp16 scales (as
    AutoAWQ GEMM stores them): the weights a layer quantized that way computes with."""
    n, k = w.shape
    g = w.float().reshape(n, k // group_size, group_size)  # (N, NG, G)
    scale, zero = asymmetric_grid(g, bits)  # (N, NG), (N, NG)
    s, z = scale.float()[..., None], zero[..., None]  # (N, NG, 1)
    return ((round_to_grid(g, s, z, bits) - z) * s).reshape(n, k)
