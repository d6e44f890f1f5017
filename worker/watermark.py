"""The sampler's watermark stage: +delta on the green list of each watermarked row's previous token.

The green list is common/watermark.py's hash, computed with int64 tensor ops (worker/hash_ops.py):
the same bits on CPU and CUDA, so the detector, which needs no torch, agrees with any worker. Only
the watermarked rows are hashed, and the previous tokens are read on the device: with overlapped
steps they are not on the host yet, and no step waits for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common import watermark as scheme
from worker import hash_ops

__all__ = ["Watermark", "green_mask"]


@dataclass(frozen=True, slots=True)
class Watermark:
    gamma: float  # expected share of the vocabulary on each green list
    delta: float  # added to the green tokens' logits

    def apply(self, logits: torch.Tensor, rows: torch.Tensor, prev_ids: torch.Tensor) -> torch.Tensor:
        """logits (B, V) float32; rows (W,) int64: the watermarked rows; prev_ids (B,) int64 device."""
        green = green_mask(prev_ids[rows], logits.shape[-1], scheme.green_threshold(self.gamma))  # (W, V)
        return logits.index_add(0, rows, green.to(logits.dtype), alpha=self.delta)


def green_mask(prev_ids: torch.Tensor, vocab: int, threshold: int) -> torch.Tensor:  # -> (W, V) bool
    token = torch.arange(vocab, device=prev_ids.device, dtype=torch.int64).unsqueeze(0)  # (1, V)
    row = hash_ops.mix(prev_ids * hash_ops.GOLDEN + scheme.KEY).unsqueeze(1)  # (W, 1)
    h = hash_ops.mix(row + token * hash_ops.GOLDEN)  # (W, V)
    return ((h >> 32) & 0xFFFFFFFF) < threshold
