"""Quantized experts: one stacked projection (w13 or w2) of a SparseMoE, every expert quantized.

A SparseMoE holds `w13` (E, 2I, H) and `w2` (E, H, I) as dense parameters; under a method that
quantizes experts the loader puts a `QuantExperts` in their place (worker/weights.py). Two
layouts, both read by the fused MoE kernel under a constexpr (genfleet_kernels/reference.py
`QuantizedExperts`):
- FP8: e4m3 weights with a float32 scale per expert and output channel: `--quantize fp8` on
  the fly (amax / 448, as the dense linears', worker/quant/fp8.py) and compressed-tensors
  float-quantized checkpoints (a per-tensor scale repeated per row). Activations stay in their
  dtype (W8A16): the kernel converts each weight tile in registers, so no per-token activation
  quantization runs per expert.
- Integers (AWQ, GPTQ, Marlin and compressed-tensors pack-quantized checkpoints): each expert is
  the integer weight-only layout of worker/quant/int_weight.py, unpacked by its format's
  per-linear unpacker, stacked; act order (a g_idx that is not the identity) is refused, since
  each expert would need its own gather of the activations.
On the CPU the stack is dequantized once at load and the reference loop runs on it, as the
quantized linears do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from genfleet_kernels.reference import QuantizedExperts, dequantize_expert, pack_int32, quantize_fp8_rows
from worker.models.moe import SparseMoE
from worker.quant.int_weight import IntWeights
from worker.quant.w8 import fp8_rows

if TYPE_CHECKING:
    from worker.quant.registry import QuantMethod

__all__ = ["QuantExperts", "fp8_experts", "fp8_experts_from_checkpoint", "int_experts", "stack_int_experts",
           "quantize_experts"]


class QuantExperts(nn.Module):
    def __init__(self, stored: QuantizedExperts, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.num_experts, self.out_features, self.in_features = stored.dims()
        self.group_size, self.bits, self.is_fp8 = stored.group_size, stored.bits, stored.is_fp8
        self.register_buffer("weight", stored.weight.to(device).contiguous())
        self.register_buffer("scale", stored.scale.to(device).contiguous())
        self.register_buffer("zeros", None if stored.zeros is None else stored.zeros.to(device).contiguous())
        # CPU: every expert dequantized once, (E, N, K) in `dtype`.
        self.dense: torch.Tensor | None = None
        if device.type != "cuda":
            self.dense = torch.stack([dequantize_expert(stored, e) for e in range(self.num_experts)]).to(device, dtype)

    def weights(self) -> torch.Tensor | QuantizedExperts:
        """What ops.fused_moe takes for this projection."""
        if self.dense is not None:
            return self.dense
        return QuantizedExperts(self.weight, self.scale, self.zeros, self.group_size, self.bits)

    def packed_bytes(self) -> int:
        tensors = [self.weight, self.scale] + ([self.zeros] if self.zeros is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def extra_repr(self) -> str:
        kind = "fp8" if self.is_fp8 else f"int{self.bits}, group={self.group_size}"
        return f"experts={self.num_experts}, in={self.in_features}, out={self.out_features}, {kind}"


def fp8_experts(dense: torch.Tensor, dtype: torch.dtype) -> QuantExperts:  # dense (E, N, K)
    weight, scale = quantize_fp8_rows(dense.reshape(-1, dense.shape[2]))  # (E * N, K) e4m3, (E * N, 1)
    stored = QuantizedExperts(weight.view(dense.shape), scale.view(dense.shape[:2]), None, 0, 8)
    return QuantExperts(stored, dtype, dense.device)


def fp8_experts_from_checkpoint(experts: list[list[dict[str, torch.Tensor]]], dtype: torch.dtype,
                                device: torch.device) -> QuantExperts:
    """Per expert, per shard, a float-quantized linear's tensors (worker/quant/w8.py `fp8_rows`),
    stacked with a scale per expert and row."""
    rows = [fp8_rows(shards) for shards in experts]  # per expert: (N, K) e4m3, (N,)
    stored = QuantizedExperts(torch.stack([w for w, _ in rows]).to(device), torch.stack([s for _, s in rows]).to(device),
                              None, 0, 8)
    return QuantExperts(stored, dtype, device)


def int_experts(experts: list[list[dict[str, torch.Tensor]]], unpack: Callable[[dict[str, torch.Tensor]], IntWeights],
                dtype: torch.dtype, device: torch.device) -> QuantExperts:
    """Per expert, per shard, a format's tensors -> its integers (`unpack`, the format's per-linear
    unpacker), the shards fused, every expert in one stack on `device`."""
    return stack_int_experts([IntWeights.fuse([unpack(s) for s in shards]) for shards in experts], dtype, device)


def stack_int_experts(experts: list[IntWeights], dtype: torch.dtype, device: torch.device) -> QuantExperts:
    first = experts[0]
    for w in experts:
        if w.g_idx is not None:
            raise ValueError("act order (desc_act) experts are not supported: each expert would gather its own "
                             "input channels; serve a checkpoint quantized without act order")
        if (w.bits, w.group_size, w.q.shape) != (first.bits, first.group_size, first.q.shape):
            raise ValueError("experts differ in bits, group size or shape")
    # (E, K / P, N) int32 packed along the inputs; zero points and scales (E, NG, N) in the scales' dtype.
    weight = torch.stack([pack_int32(w.q.to(device), w.bits).t() for w in experts])
    scale = torch.stack([w.scales.t() for w in experts]).to(device)
    zeros = torch.stack([w.zeros.t() for w in experts]).to(device=device, dtype=scale.dtype)
    return QuantExperts(QuantizedExperts(weight.contiguous(), scale, zeros, first.group_size, first.bits), dtype, device)


def quantize_experts(model: nn.Module, method: QuantMethod, dtype: torch.dtype, *, random: bool = False) -> None:
    """Every SparseMoE's dense stacks, on their device, into the method's QuantExperts: quantized
    on the fly, or (`random`, benchmarks) random ones of the method's layout in their place."""
    for moe in [m for m in model.modules() if isinstance(m, SparseMoE)]:
        for name in ("w13", "w2"):
            dense = getattr(moe, name)
            delattr(moe, name)  # a parameter of that name would refuse a module
            if random and not method.on_the_fly:
                built = method.random_experts(*dense.shape, dtype, dense.device)
            else:
                built = method.experts_from_dense(dense.data, dtype)
            setattr(moe, name, built)
            del dense  # freed before the next stack is quantized
