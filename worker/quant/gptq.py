"""GPTQ checkpoints (AutoGPTQ, GPTQModel): `--quantize gptq`, which loads AWQ checkpoints too, as in TGI.

Per linear: `qweight` int32 (K * b / 32, N), packed along the inputs (input channel r*P + i of
row r at bits i*b, P = 32 / b); `qzeros` int32 (K / G, N * b / 32), packed the same way along the
outputs; `scales` float16 (K / G, N); `g_idx` int32 (K,), the group of each input channel, which
is not monotone under act order (desc_act). The classic format (checkpoint_format "gptq", v1)
stores each zero point minus one (its kernels add the one back); "gptq_v2" stores it as is.
sym only decides the zero points the quantizer chose; they are read from qzeros either way.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from genfleet_kernels.reference import unpack_int32
from worker.quant.checkpoint_config import group_size_of
from worker.quant.experts import QuantExperts, int_experts
from worker.quant.int_weight import IntWeightLinear, IntWeights
from worker.quant.registry import QuantizationError, QuantMethod, register

__all__ = ["GPTQ"]


def is_marlin_checkpoint(checkpoint: dict[str, Any]) -> bool:
    return bool(checkpoint.get("is_marlin_format")) or _format_of(checkpoint) in ("marlin", "marlin_24")


@register
class GPTQ(QuantMethod):
    name: ClassVar[str] = "gptq"
    tensor_names: ClassVar[tuple[str, ...]] = ("qweight", "qzeros", "scales", "g_idx")
    quantizes_experts: ClassVar[bool] = True

    def __init__(self, checkpoint: dict[str, Any] | None) -> None:
        super().__init__(checkpoint)
        cfg = checkpoint or {}
        self.awq = cfg.get("quant_method") == "awq"
        if self.awq:
            from worker.quant.awq import AWQ

            self._awq: AWQ | None = AWQ(checkpoint)
            return
        self._awq = None
        self.bits = int(cfg.get("bits", 4))
        self.group_size = cfg.get("group_size", -1)
        self.version = 2 if _format_of(cfg) == "gptq_v2" else 1
        if self.bits not in (4, 8):
            raise QuantizationError(f"GPTQ with {self.bits} bits: 4 and 8 load")
        if _format_of(cfg) not in ("gptq", "gptq_v2"):
            raise QuantizationError(f"GPTQ checkpoint_format {_format_of(cfg)!r}: gptq and gptq_v2 load")

    @classmethod
    def claims(cls, checkpoint: dict[str, Any]) -> bool:
        return checkpoint.get("quant_method") == "gptq" and not is_marlin_checkpoint(checkpoint)

    @classmethod
    def loads(cls, detected: str) -> bool:
        return detected in ("gptq", "awq")

    def build(self, shards: list[dict[str, torch.Tensor]], bias: torch.Tensor | None,
              dtype: torch.dtype, device: torch.device) -> nn.Module:
        if self._awq is not None:
            return self._awq.build(shards, bias, dtype, device)
        return IntWeightLinear(IntWeights.fuse([self._unpack(s) for s in shards]), bias, dtype, device)

    def experts_from_checkpoint(self, experts: list[list[dict[str, torch.Tensor]]],
                                dtype: torch.dtype, device: torch.device) -> QuantExperts:
        if self._awq is not None:
            return self._awq.experts_from_checkpoint(experts, dtype, device)
        return int_experts(experts, self._unpack, dtype, device)

    def _unpack(self, t: dict[str, torch.Tensor]) -> IntWeights:
        scales = t["scales"]  # (NG, N)
        n = scales.shape[1]
        q = unpack_int32(t["qweight"].t().contiguous(), self.bits)  # (N, K)
        zeros = unpack_int32(t["qzeros"], self.bits)[:, :n]  # (NG, N)
        if self.version == 1:
            zeros = zeros + 1  # v1 stores z - 1 (so a stored 15 means 16, as its kernels compute)
        k = q.shape[1]
        g_idx = t["g_idx"].long() if "g_idx" in t else None
        return IntWeights(q.to(torch.uint8), zeros.t().contiguous(), scales.t().contiguous(),
                          group_size_of(self.group_size, k), self.bits, g_idx)

    def describe(self) -> str:
        if self._awq is not None:
            return f"gptq, loading an {self._awq.describe()} checkpoint"
        return f"gptq (v{self.version}, {self.bits}-bit, group {self.group_size})"


def _format_of(checkpoint: dict[str, Any]) -> str:
    # GPTQModel writes `checkpoint_format`; its newer releases write `format`.
    return str(checkpoint.get("checkpoint_format") or checkpoint.get("format") or "gptq")
