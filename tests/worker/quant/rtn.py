"""The tests' own round-to-nearest quantizer: integers, zero points and scales of one weight.

Written from the formats' definition (W = (q - z) * s per group of input channels, scales in the
format's dtype), not from the worker's code, so the worker's unpackers are checked against it; the
asymmetric grid is load/int_grid.py's, which the AWQ search and GPTQ quantize onto.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from load.int_grid import asymmetric_grid, round_to_grid


@dataclass
class Quantized:
    q: torch.Tensor  # (N, K) int64 in [0, 2**bits)
    zeros: torch.Tensor  # (N, NG) int64
    scales: torch.Tensor  # (N, NG) in the format's scale dtype
    g_idx: torch.Tensor  # (K,) int64: the group of each input channel
    bits: int
    group_size: int  # channels per group; K for one group per row

    def dequantized(self) -> torch.Tensor:  # (N, K) float32: what the served model must hold
        z = self.zeros[:, self.g_idx]
        s = self.scales.float()[:, self.g_idx]
        return (self.q - z).float() * s


def quantize(w: torch.Tensor, bits: int, group_size: int, *, sym: bool, scale_dtype: torch.dtype = torch.float16,
             act_order: bool = False, min_zero: int = 0, seed: int = 0) -> Quantized:
    """`group_size` <= 0: one group per output row. `act_order`: groups over a random permutation of
    the input channels, as GPTQ's desc_act orders them by the Hessian. `min_zero`: the smallest zero
    point allowed (GPTQ v1 stores z - 1, so it cannot hold 0)."""
    n, k = w.shape
    size = k if group_size <= 0 else group_size
    groups = -(-k // size)
    if act_order:
        order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
        g_idx = torch.empty(k, dtype=torch.int64)
        g_idx[order] = torch.arange(k) // size
    else:
        g_idx = torch.arange(k) // size
    top = 2**bits - 1
    # Channels sorted by group, padded with zeros to whole groups (a zero moves neither bound).
    order = torch.argsort(g_idx, stable=True)
    padded = torch.zeros(n, groups * size)
    padded[:, :k] = w.float()[:, order]
    grouped = padded.reshape(n, groups, size)  # (N, NG, G)
    if sym:
        scales = (grouped.abs().amax(-1) * 2 / top).clamp(min=1e-6).to(scale_dtype)
        zeros = torch.full((n, groups), (top + 1) // 2, dtype=torch.int64)
    else:
        scales, zeros = asymmetric_grid(grouped, bits, scale_dtype, min_zero=min_zero)
    codes = round_to_grid(grouped, scales.float()[..., None], zeros[..., None], bits)  # (N, NG, G)
    q = torch.empty(n, k, dtype=torch.int64)
    q[:, order] = codes.reshape(n, -1)[:, :k]
    return Quantized(q, zeros, scales, g_idx, bits, size)


def pack_words(values: torch.Tensor, bits: int) -> torch.Tensor:  # (R, C) -> (R, C * bits / 32) int32
    """Value c of a row goes to word c // P at bit (c % P) * bits, P = 32 // bits."""
    per = 32 // bits
    rows, cols = values.shape
    out = torch.zeros(rows, cols // per, dtype=torch.int64)
    for i in range(per):
        out |= (values[:, i::per].long() & (2**bits - 1)) << (bits * i)
    return (out - (out >= 2**31).long() * 2**32).to(torch.int32)
