"""A decoder linear with LoRA updates, and the step's rows-to-adapter map it reads.

`LoraLinear` wraps a linear (dense or quantized) that some loaded adapter targets: it computes the
base projection, then adds each adapter row's x @ A.T @ B.T through `ops.lora_add` (the Triton
kernel on CUDA, genfleet_kernels/reference.py's on CPU). Which rows belong to which adapter slot is the
step's `LoraBatch`, set around one forward by `lora_scope` (a context variable, not a global, as
worker/attention.py's forward context); a step without adapter rows sets none and every wrapped
linear is its base alone.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from worker import ops
from worker.models.layers import linear

__all__ = ["LoraBatch", "LoraLinear", "lora_scope"]


@dataclass(slots=True)
class LoraBatch:
    seg_starts: torch.Tensor  # (S + 1,) int32 device: segment s is token rows seg_starts[s]:seg_starts[s+1]
    seg_slots: torch.Tensor  # (S,) int32 device: the adapter slot of each segment, -1 = the base model
    max_seg_len: int  # host: the longest segment's rows (the kernels' grid)


_STEP: contextvars.ContextVar[LoraBatch | None] = contextvars.ContextVar("genfleet_lora", default=None)


@contextlib.contextmanager
def lora_scope(batch: LoraBatch | None) -> Iterator[None]:
    token = _STEP.set(batch)
    try:
        yield
    finally:
        _STEP.reset(token)


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Module, part_sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.base = base
        self.in_features: int = base.in_features  # type: ignore[assignment]
        self.out_features: int = base.out_features  # type: ignore[assignment]
        assert sum(part_sizes) == self.out_features, (part_sizes, self.out_features)
        self.part_sizes = part_sizes  # output rows of each fused part (q, k, v / gate, up / one)
        # Every slot's weights, stacked (worker/lora/table.py), in the model's dtype and device;
        # None while no loaded adapter targets this linear.
        self.lora_a: torch.Tensor | None = None  # (L, parts * R, in)
        self.lora_b: torch.Tensor | None = None  # (L, out, parts * R): block-diagonal, scaled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = linear(x, self.base)  # (T, out)
        batch = _STEP.get()
        if batch is None or self.lora_a is None or self.lora_b is None:
            return out
        ops.lora_add(out, x.contiguous(), self.lora_a, self.lora_b, batch.seg_starts, batch.seg_slots, batch.max_seg_len)
        return out
