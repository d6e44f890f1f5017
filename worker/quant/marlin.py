"""Marlin-packed checkpoints (IST-DASLab's format): `--quantize marlin`, repacked at load.

Per linear: `B` int32 (K / 16, 2N) and `s` float16 (K / G, N); 4-bit, symmetric (zero point 8).
Marlin's packer transposes W to (K, N), cuts it into 16x16 tiles laid out tile row by tile row,
shuffles each run of 1024 values into the order its tensor-core fragments read, and packs eight
values per word, value i at bits 4i; the scales of each run of 64 (32 per channel) are shuffled
too. Unpacking undoes those steps; the 2:4-sparse variant (marlin_24) is not read.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from genfleet_kernels.reference import unpack_int32
from worker.quant.experts import QuantExperts, int_experts
from worker.quant.gptq import is_marlin_checkpoint
from worker.quant.int_weight import IntWeightLinear, IntWeights
from worker.quant.registry import QuantizationError, QuantMethod, register

__all__ = ["Marlin", "marlin_permutations"]

_TILE = 16


def marlin_permutations() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the 1024-value weight shuffle, the 64-scale group shuffle, the 32-scale channel shuffle)."""
    lane = torch.arange(32)
    r, col = lane % 4, lane // 4
    rows = torch.stack([2 * r, 2 * r + 1, 2 * r + 8, 2 * r + 9], 1)  # (32, 4): fragment rows of each lane
    per_lane = (16 * rows[:, None, :] + col[:, None, None] + 8 * torch.arange(2)[None, :, None]).reshape(32, 8)
    weights = (per_lane[:, None, :] + 256 * torch.arange(4)[None, :, None]).reshape(-1, 8)  # (128, 8)
    weights = weights[:, [0, 2, 4, 6, 1, 3, 5, 7]].reshape(-1)  # (1024,)
    group = torch.arange(64).reshape(8, 8).t().reshape(-1)  # value 8j + i moves to 8i + j
    channel = (2 * torch.arange(4)[:, None] + torch.tensor([0, 1, 8, 9, 16, 17, 24, 25])[None, :]).reshape(-1)
    return weights, group, channel


@register
class Marlin(QuantMethod):
    name: ClassVar[str] = "marlin"
    tensor_names: ClassVar[tuple[str, ...]] = ("B", "s")
    quantizes_experts: ClassVar[bool] = True

    def __init__(self, checkpoint: dict[str, Any] | None) -> None:
        super().__init__(checkpoint)
        cfg = checkpoint or {}
        fmt = cfg.get("checkpoint_format")
        if fmt == "marlin_24" or int(cfg.get("bits", 4)) != 4:
            raise QuantizationError(f"Marlin checkpoint {fmt or ''} with {cfg.get('bits', 4)} bits: "
                                    "only the dense 4-bit format loads (not 2:4 sparse)")
        perm, group, channel = marlin_permutations()
        self._unshuffle = torch.argsort(perm)
        self._unshuffle_group = torch.argsort(group)
        self._unshuffle_channel = torch.argsort(channel)

    @classmethod
    def claims(cls, checkpoint: dict[str, Any]) -> bool:
        return checkpoint.get("quant_method") == "marlin" or (
            checkpoint.get("quant_method") == "gptq" and is_marlin_checkpoint(checkpoint)
        )

    def build(self, shards: list[dict[str, torch.Tensor]], bias: torch.Tensor | None,
              dtype: torch.dtype, device: torch.device) -> nn.Module:
        return IntWeightLinear(IntWeights.fuse([self._unpack(s) for s in shards]), bias, dtype, device)

    def experts_from_checkpoint(self, experts: list[list[dict[str, torch.Tensor]]],
                                dtype: torch.dtype, device: torch.device) -> QuantExperts:
        return int_experts(experts, self._unpack, dtype, device)

    def _unpack(self, t: dict[str, torch.Tensor]) -> IntWeights:
        packed, s = t["B"], t["s"]
        k, n = packed.shape[0] * _TILE, s.shape[1]
        runs = unpack_int32(packed, 4).reshape(-1, 1024)[:, self._unshuffle]  # (K * N / 1024, 1024)
        tiles = runs.reshape(k // _TILE, n // _TILE, _TILE, _TILE)  # (tile row, tile col, row, col)
        w = tiles.permute(0, 2, 1, 3).reshape(k, n)  # (K, N)
        per_channel = s.shape[0] == 1
        unshuffle = self._unshuffle_channel if per_channel else self._unshuffle_group
        scales = s.reshape(-1, unshuffle.numel())[:, unshuffle].reshape(s.shape)  # (K / G, N)
        return IntWeights(
            q=w.t().to(torch.uint8).contiguous(), zeros=torch.full((n, s.shape[0]), 8, dtype=torch.int32),
            scales=scales.t().contiguous(), group_size=k // s.shape[0], bits=4,
        )

    def describe(self) -> str:
        return "marlin (4-bit, symmetric)"
