"""Attention over the paged KV cache, with its per-step metadata scoped to one forward pass.

The runner builds `AttentionMetadata` once per step and enters `forward_context(meta)`; every
layer's attention reads it from there. Nesting is an error: one forward at a time per process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from worker import ops

__all__ = ["AttentionMetadata", "forward_context", "current_metadata", "attend"]


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (T,) int64 device: where each new token's K/V goes
    block_tables: torch.Tensor  # (B, max_blocks) int32 device
    seq_lens: torch.Tensor  # (B,) int32 device: cached + new tokens per sequence
    query_start_loc: torch.Tensor  # (B + 1,) int32 device
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k_cache, v_cache)
    max_query_len: int  # 1 when every sequence decodes


_current: AttentionMetadata | None = None


@contextlib.contextmanager
def forward_context(meta: AttentionMetadata) -> Iterator[AttentionMetadata]:
    global _current
    if _current is not None:
        raise RuntimeError("forward_context is not re-entrant: a forward pass is already running")
    _current = meta
    try:
        yield meta
    finally:
        _current = None


def current_metadata() -> AttentionMetadata:
    if _current is None:
        raise RuntimeError("attention called outside forward_context")
    return _current


def attend(
    layer_idx: int,
    q: torch.Tensor,  # (T, H, D)
    k: torch.Tensor,  # (T, n_kv, D)
    v: torch.Tensor,  # (T, n_kv, D)
    scale: float,
) -> torch.Tensor:  # (T, H, D)
    meta = current_metadata()
    k_cache, v_cache = meta.kv_caches[layer_idx]
    ops.store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
    return ops.paged_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc, scale)  # type: ignore[no-any-return]
