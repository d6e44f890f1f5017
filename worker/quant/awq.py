"""AutoAWQ "GEMM" checkpoints: `--quantize awq`.

Per linear: `qweight` int32 (K, N / 8), eight 4-bit values per word packed along the outputs in
AWQ's interleaved order (nibble i holds output column 8j + [0, 2, 4, 6, 1, 3, 5, 7][i]);
`qzeros` int32 (K / G, N / 8) packed the same way, the zero point stored as is; `scales` float16
(K / G, N). W[k, n] = (q - z) * s per group of G input channels.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from genfleet_kernels.reference import unpack_int32
from worker.quant.checkpoint_config import group_size_of
from worker.quant.experts import QuantExperts, int_experts, stack_int_experts
from worker.quant.int_weight import IntWeightLinear, IntWeights
from worker.quant.registry import QuantizationError, QuantMethod, register

__all__ = ["AWQ", "AWQ_PACK_ORDER"]

AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds output column 8j + AWQ_PACK_ORDER[i]
_UNPACK = torch.argsort(torch.tensor(AWQ_PACK_ORDER))  # column m of a word sits at nibble _UNPACK[m]


@register
class AWQ(QuantMethod):
    name: ClassVar[str] = "awq"
    tensor_names: ClassVar[tuple[str, ...]] = ("qweight", "qzeros", "scales")
    quantizes_experts: ClassVar[bool] = True

    def __init__(self, checkpoint: dict[str, Any] | None) -> None:
        super().__init__(checkpoint)
        cfg = checkpoint or {}
        self.bits = int(cfg.get("bits", cfg.get("w_bit", 4)))
        self.group_size = cfg.get("group_size", cfg.get("q_group_size", 128))
        version = str(cfg.get("version", "gemm")).lower()
        if version != "gemm" or self.bits != 4:
            raise QuantizationError(
                f"AWQ checkpoint version {version!r} with {self.bits} bits: only AutoAWQ's GEMM format, 4 bits, loads"
            )

    def build(self, shards: list[dict[str, torch.Tensor]], bias: torch.Tensor | None,
              dtype: torch.dtype, device: torch.device) -> nn.Module:
        return IntWeightLinear(IntWeights.fuse([self._unpack(s) for s in shards]), bias, dtype, device)

    def experts_from_checkpoint(self, experts: list[list[dict[str, torch.Tensor]]],
                                dtype: torch.dtype, device: torch.device) -> QuantExperts:
        return int_experts(experts, self._unpack, dtype, device)

    def random_experts(self, num_experts: int, out_features: int, in_features: int,
                       dtype: torch.dtype, device: torch.device) -> QuantExperts:
        group = group_size_of(self.group_size, in_features)
        return stack_int_experts([IntWeights.random(out_features, in_features, group, 4, device)
                                  for _ in range(num_experts)], dtype, device)

    def _unpack(self, t: dict[str, torch.Tensor]) -> IntWeights:
        k = t["qweight"].shape[0]
        q = _unpack_columns(t["qweight"])  # (K, N)
        zeros = _unpack_columns(t["qzeros"])  # (NG, N)
        return IntWeights(
            q=q.t().to(torch.uint8).contiguous(), zeros=zeros.t().contiguous(), scales=t["scales"].t().contiguous(),
            group_size=group_size_of(self.group_size, k), bits=4,
        )

    def describe(self) -> str:
        return f"awq (4-bit, group {self.group_size})"

    def random(self, out_features: int, in_features: int, dtype: torch.dtype, device: torch.device) -> nn.Module:
        weights = IntWeights.random(out_features, in_features, group_size_of(self.group_size, in_features), 4, device)
        return IntWeightLinear(weights, None, dtype, device)


def _unpack_columns(packed: torch.Tensor) -> torch.Tensor:  # (R, N / 8) int32 -> (R, N) int32
    nibbles = unpack_int32(packed, 4).reshape(packed.shape[0], -1, 8)  # (R, N / 8, 8) in nibble order
    return nibbles[:, :, _UNPACK].reshape(packed.shape[0], -1)
