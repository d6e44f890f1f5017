"""compressed-tensors (llm-compressor) checkpoints: `--quantize compressed-tensors`.

The integer weight-only scheme, format `pack-quantized` (W4A16, W8A16), lands in the integer
layout: `weight_packed` int32 (N, K * b / 32), packed along the inputs, value i of a word at bits
i*b, each value stored as q + 2**(b-1) (the library's signed range shifted to unsigned);
`weight_scale` (N, K / G) (G = K for strategy "channel"); asymmetric schemes add
`weight_zero_point` int32 (N * b / 32, K / G), packed the same way along the outputs; act order
adds `weight_g_idx` (K,). W = (q - z) * s with the library's signed q and z.

The FP8 scheme, format `float-quantized` (FP8, FP8_DYNAMIC: e4m3 weights with per-tensor or
per-channel scales, activations FP8), lands in the one-byte layout (worker/quant/fp8.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from genfleet_kernels.reference import unpack_int32
from worker.quant.experts import QuantExperts, fp8_experts_from_checkpoint, int_experts
from worker.quant.fp8 import fp8_from_checkpoint
from worker.quant.int_weight import IntWeightLinear, IntWeights
from worker.quant.registry import QuantizationError, QuantMethod, register

__all__ = ["CompressedTensors"]


@register
class CompressedTensors(QuantMethod):
    name: ClassVar[str] = "compressed-tensors"
    tensor_names: ClassVar[tuple[str, ...]] = (
        "weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape",
    )
    quantizes_experts: ClassVar[bool] = True

    def __init__(self, checkpoint: dict[str, Any] | None) -> None:
        super().__init__(checkpoint)
        groups = list(((checkpoint or {}).get("config_groups") or {}).values())
        if len(groups) != 1:
            raise QuantizationError(f"compressed-tensors: {len(groups)} config groups; one scheme for every linear loads")
        scheme = groups[0]
        weights = scheme.get("weights") or {}
        fmt = scheme.get("format") or (checkpoint or {}).get("format")
        self.bits = int(weights.get("num_bits", 0))
        self.strategy = weights.get("strategy")
        self.fp8 = fmt == "float-quantized"
        if self.fp8:
            if weights.get("type") != "float" or self.bits != 8 or self.strategy not in ("tensor", "channel"):
                raise QuantizationError(
                    f"compressed-tensors float-quantized {weights.get('type')} {self.bits}-bit weights with strategy "
                    f"{self.strategy!r}: FP8 weights with per-tensor or per-channel scales load"
                )
            # The float scheme stores its weights under the dense name.
            self.tensor_names = ("weight", "weight_scale", "input_scale")  # type: ignore[misc]
            return
        if fmt != "pack-quantized" or weights.get("type") != "int" or self.bits not in (4, 8) \
                or scheme.get("input_activations"):
            raise QuantizationError(
                f"compressed-tensors format {fmt!r} ({weights.get('type')} {self.bits}-bit weights, activations "
                f"{'quantized' if scheme.get('input_activations') else 'not quantized'}): this build loads "
                "pack-quantized integer weight-only schemes (W4A16, W8A16) and float-quantized FP8"
            )
        if self.strategy not in ("group", "channel"):
            raise QuantizationError(f"compressed-tensors weight strategy {self.strategy!r}: group or channel loads")
        self.group_size = weights.get("group_size")

    def build(self, shards: list[dict[str, torch.Tensor]], bias: torch.Tensor | None,
              dtype: torch.dtype, device: torch.device) -> nn.Module:
        if self.fp8:
            return fp8_from_checkpoint(shards, bias, dtype, device)
        return IntWeightLinear(IntWeights.fuse([self._unpack(s) for s in shards]), bias, dtype, device)

    def experts_from_checkpoint(self, experts: list[list[dict[str, torch.Tensor]]],
                                dtype: torch.dtype, device: torch.device) -> QuantExperts:
        if self.fp8:
            return fp8_experts_from_checkpoint(experts, dtype, device)
        return int_experts(experts, self._unpack, dtype, device)

    def _unpack(self, t: dict[str, torch.Tensor]) -> IntWeights:
        n, k = (int(v) for v in t["weight_shape"].tolist())
        q = unpack_int32(t["weight_packed"], self.bits)[:, :k]  # (N, K)
        scales = t["weight_scale"]  # (N, NG)
        offset = 1 << (self.bits - 1)
        if "weight_zero_point" in t:
            zeros = unpack_int32(t["weight_zero_point"].t().contiguous(), self.bits)[:, :n].t()  # (N, NG) unsigned
        else:
            zeros = torch.full(scales.shape, offset, dtype=torch.int32)
        group = k if self.strategy == "channel" else int(self.group_size)
        g_idx = t["weight_g_idx"].long() if "weight_g_idx" in t else None
        return IntWeights(q.to(torch.uint8), zeros.contiguous(), scales.contiguous(), group, self.bits, g_idx)

    def describe(self) -> str:
        if self.fp8:
            return f"compressed-tensors (float-quantized FP8, per-{self.strategy} weight scales)"
        group = "per channel" if self.strategy == "channel" else f"group {self.group_size}"
        return f"compressed-tensors (pack-quantized, {self.bits}-bit, {group})"
