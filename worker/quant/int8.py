"""int8 weight-only linears on the fly: `--quantize eetq` and `--quantize bitsandbytes`.

Both of TGI's 8-bit methods quantize a dense checkpoint on load to symmetric per-output-channel
int8: s[n] = amax(|W[n]|) / 127, q = round(W[n] / s[n]) in [-127, 127], W[n] ~ q * s[n]; the
activations stay in the model's dtype (W8A16). EETQ is exactly this. bitsandbytes' LLM.int8 also
keeps activation columns above an outlier threshold (6.0) in 16 bits; that split is not done
here, so its outputs differ slightly from TGI's bitsandbytes (TGI's docs call EETQ its drop-in
replacement). The module and its kernels are the one-byte layout's (worker/quant/w8.py).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from worker.quant.registry import QuantMethod, register
from worker.quant.w8 import W8Linear

__all__ = ["Eetq", "Bitsandbytes8bit", "quantize_int8_rows"]


def quantize_int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (N, K) -> (N, K) int8, (N,) float32
    wf = w.float()
    scale = (wf.abs().amax(dim=1) / 127).clamp(min=1e-12)  # (N,)
    return torch.round(wf / scale.unsqueeze(1)).clamp(-127, 127).to(torch.int8), scale


class _Int8OnTheFly(QuantMethod):
    tensor_names: ClassVar[tuple[str, ...]] = ("weight",)
    on_the_fly: ClassVar[bool] = True

    def build(self, shards: list[dict[str, torch.Tensor]], bias: torch.Tensor | None,
              dtype: torch.dtype, device: torch.device) -> nn.Module:
        return W8Linear(*quantize_int8_rows(torch.cat([s["weight"] for s in shards]).to(device)), bias, dtype, device)

    def describe(self) -> str:
        return f"{self.name} (int8 weight-only, per-channel scales)"

    def random(self, out_features: int, in_features: int, dtype: torch.dtype, device: torch.device) -> nn.Module:
        dense = torch.randn(out_features, in_features, device=device) / in_features**0.5
        return W8Linear(*quantize_int8_rows(dense), None, dtype, device)


@register
class Eetq(_Int8OnTheFly):
    name: ClassVar[str] = "eetq"


@register
class Bitsandbytes8bit(_Int8OnTheFly):
    name: ClassVar[str] = "bitsandbytes"
