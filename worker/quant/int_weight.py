"""The integer weight-only layout (W4A16, W8A16): what every 4-bit format is repacked into.

Formats meet at `IntWeights`, a linear's integers unpacked (one uint8 per weight), its zero
points and scales per group, and its act-order group map; `IntWeightLinear` packs them
into the kernels' layout (genfleet_kernels/reference.py's header gives it). Zero points are stored as the
integers they are, so W = (q - z) * s is computed exactly as the format defines it.

On CUDA the forward runs the Triton kernels chosen per shape (worker/quant/int_kernels.py); on
the CPU the weight is dequantized once at load and the product is a plain float matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genfleet_kernels.reference import dequantize_int_weight, pack_int32

__all__ = ["IntWeights", "IntWeightLinear"]


@dataclass(slots=True)
class IntWeights:
    q: torch.Tensor  # (N, K) uint8: the stored integers, unsigned, in input-channel order
    zeros: torch.Tensor  # (N, NG) int32: unsigned zero point per output channel and group
    scales: torch.Tensor  # (N, NG) float16 / bfloat16 / float32
    group_size: int  # input channels per group (K for one group per row)
    bits: int  # 4 or 8
    g_idx: torch.Tensor | None = None  # (K,) int64: group of each input channel; None = k // group_size

    def __post_init__(self) -> None:
        n, k = self.q.shape
        groups = -(-k // self.group_size)
        if self.bits not in (4, 8):
            raise ValueError(f"{self.bits}-bit weights are not supported (4 or 8)")
        if k % (32 // self.bits) or self.group_size % 8 and self.group_size != k:
            raise ValueError(f"in_features {k} and group size {self.group_size} must be multiples of 8")
        if self.zeros.shape != (n, groups) or self.scales.shape != (n, groups):
            raise ValueError(
                f"zeros {tuple(self.zeros.shape)} / scales {tuple(self.scales.shape)} do not match "
                f"{n} outputs x {groups} groups of {self.group_size}"
            )
        if self.g_idx is not None and torch.equal(self.g_idx.cpu(), torch.arange(k) // self.group_size):
            self.g_idx = None  # act order that is the identity

    @staticmethod
    def fuse(parts: list[IntWeights]) -> IntWeights:
        """Shards stacked along the outputs (q, k, v into qkv): they must share groups and act order."""
        first = parts[0]
        for p in parts[1:]:
            same_order = (p.g_idx is None) == (first.g_idx is None) and (
                p.g_idx is None or torch.equal(p.g_idx, first.g_idx)  # type: ignore[arg-type]
            )
            if (p.bits, p.group_size) != (first.bits, first.group_size) or not same_order:
                raise ValueError("fused shards differ in bits, group size or act order (g_idx)")
        return IntWeights(
            torch.cat([p.q for p in parts]), torch.cat([p.zeros for p in parts]),
            torch.cat([p.scales for p in parts]), first.group_size, first.bits, first.g_idx,
        )

    @staticmethod
    def random(n: int, k: int, group_size: int, bits: int, device: torch.device) -> IntWeights:
        """Uniform random integers, mid-range zero points, scales giving unit-variance outputs."""
        groups = -(-k // group_size)
        top = 1 << bits
        return IntWeights(
            q=torch.randint(0, top, (n, k), dtype=torch.uint8, device=device),
            zeros=torch.full((n, groups), top // 2, dtype=torch.int32, device=device),
            scales=torch.full((n, groups), 2.0 / (top * k**0.5), dtype=torch.float16, device=device),
            group_size=group_size, bits=bits,
        )

    def dequantize(self) -> torch.Tensor:  # (N, K) float32
        group = self.g_idx if self.g_idx is not None else torch.arange(self.q.shape[1]) // self.group_size
        return (self.q.float() - self.zeros.float()[:, group]) * self.scales.float()[:, group]


class IntWeightLinear(nn.Module):
    def __init__(self, weights: IntWeights, bias: torch.Tensor | None, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        n, k = weights.q.shape
        self.out_features, self.in_features = n, k
        self.bits, self.group_size = weights.bits, weights.group_size
        q, perm = weights.q, None
        if weights.g_idx is not None:
            # Act order: store channels sorted by group so each group is one contiguous run,
            # and gather x's columns into that order at run time.
            perm = torch.argsort(weights.g_idx, stable=True)
            if not torch.equal(weights.g_idx[perm], torch.arange(k) // self.group_size):
                raise ValueError(f"g_idx does not split the {k} input channels into groups of {self.group_size}")
            q = q[:, perm]
        # Each output's words contiguous along K: a program streams long runs of one row.
        self.register_buffer("qweight", pack_int32(q, self.bits).contiguous().to(device))  # (N, K / P) int32
        self.register_buffer("scales", weights.scales.contiguous().to(device))  # (N, NG)
        zeros = weights.zeros.contiguous().to(device=device, dtype=weights.scales.dtype)
        self.register_buffer("zeros", zeros)  # (N, NG)
        self.register_buffer("perm", None if perm is None else perm.to(device))  # (K,) int64
        self.bias = None if bias is None else nn.Parameter(bias.to(device=device, dtype=dtype), requires_grad=False)
        if device.type == "cuda":
            from genfleet_kernels.split_k import counters

            counters(device, 0)  # the split-K counters exist before any graph capture
        # CPU: the weight dequantized once, in input-column order (so no gather), in `dtype`.
        self.dense: torch.Tensor | None = None
        if device.type != "cuda":
            stored = dequantize_int_weight(self.qweight, self.scales, self.zeros, self.group_size, self.bits)
            dense = torch.empty_like(stored)
            dense[:, perm if perm is not None else slice(None)] = stored
            self.dense = dense.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (T, K) -> (T, N)
        if self.dense is not None:
            return F.linear(x, self.dense, self.bias)
        from worker.quant import int_kernels

        return int_kernels.int_weight_linear(x, self)

    def packed_bytes(self) -> int:
        tensors = [self.qweight, self.scales, self.zeros] + ([self.perm] if self.perm is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int{self.bits}, group={self.group_size}, act_order={self.perm is not None}"
