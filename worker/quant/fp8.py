"""FP8 (e4m3) weights: `--quantize fp8` on the fly, and compressed-tensors `float-quantized` checkpoints.

A mixture-of-experts model's experts are quantized on the fly too, per expert and output channel
(worker/quant/experts.py); their activations stay unquantized.

On the fly (TGI's `Fp8Linear.from_unquant` with its per-row path): each output channel n of the
dense weight gets s[n] = amax(|W[n]|) / 448 and is stored as W[n] / s[n] in e4m3; activations are
quantized per token at run time (worker/quant/w8.py), so no calibration is needed. The
arithmetic is genfleet_kernels/reference.py `quantize_fp8_rows`, the same as the activations'.

compressed-tensors float-quantized (llm-compressor's FP8 / FP8_DYNAMIC schemes): `weight` e4m3
(N, K) and `weight_scale` float (1,) for strategy "tensor" or (N, 1) for "channel". Fused shards
(q, k, v) keep their own scales row by row, so nothing is requantized. A static `input_scale`
is not used: activations are always scaled per token, which is at least as precise.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from genfleet_kernels.reference import quantize_fp8_rows
from worker.quant.experts import QuantExperts, fp8_experts
from worker.quant.registry import QuantizationError, QuantMethod, register
from worker.quant.w8 import W8Linear, fp8_rows

__all__ = ["Fp8", "fp8_from_checkpoint"]


@register
class Fp8(QuantMethod):
    name: ClassVar[str] = "fp8"
    tensor_names: ClassVar[tuple[str, ...]] = ("weight",)
    on_the_fly: ClassVar[bool] = True
    quantizes_experts: ClassVar[bool] = True

    @classmethod
    def claims(cls, checkpoint: dict[str, Any]) -> bool:
        # quant_method "fp8" checkpoints (transformers' block-wise FP8) are not loaded: no claim,
        # so they get the registry's clear "cannot load" error.
        return False

    def build(self, shards: list[dict[str, torch.Tensor]], bias: torch.Tensor | None,
              dtype: torch.dtype, device: torch.device) -> nn.Module:
        dense = torch.cat([s["weight"] for s in shards]).to(device)  # (N, K)
        if dense.element_size() == 1:
            raise QuantizationError("--quantize fp8 quantizes 16/32-bit weights; this checkpoint's are already 8-bit")
        weight, scale = quantize_fp8_rows(dense)  # (N, K) e4m3, (N, 1)
        return W8Linear(weight, scale, bias, dtype, device)

    def experts_from_dense(self, dense: torch.Tensor, dtype: torch.dtype) -> QuantExperts:
        if dense.element_size() == 1:
            raise QuantizationError("--quantize fp8 quantizes 16/32-bit experts; this checkpoint's are already 8-bit")
        return fp8_experts(dense, dtype)

    def describe(self) -> str:
        return "fp8 (e4m3 weights with per-channel scales, activations per token; experts' activations unquantized)"

    def random(self, out_features: int, in_features: int, dtype: torch.dtype, device: torch.device) -> nn.Module:
        dense = torch.randn(out_features, in_features, device=device) / in_features**0.5
        return W8Linear(*quantize_fp8_rows(dense), None, dtype, device)


def fp8_from_checkpoint(shards: list[dict[str, torch.Tensor]], bias: torch.Tensor | None,
                        dtype: torch.dtype, device: torch.device) -> W8Linear:
    """A float-quantized linear: per shard `weight` e4m3 (N_i, K) and `weight_scale` (1,) or (N_i, 1)."""
    return W8Linear(*fp8_rows(shards), bias, dtype, device)
