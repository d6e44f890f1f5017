"""Torch references of the fused kernels, each composed of genfleet_kernels/reference.py's unfused parts, so
a fused kernel is checked against exactly the work it replaces (and the CPU runs these)."""

from __future__ import annotations

import torch

from genfleet_kernels import reference

__all__ = ["rotary_store_kv"]


def rotary_store_kv(
    positions: torch.Tensor,  # (T,) int64
    q: torch.Tensor,  # (T, H, D)
    k: torch.Tensor,  # (T, n_kv, D)
    v: torch.Tensor,  # (T, n_kv, D)
    cos_sin_cache: torch.Tensor,  # (max_position, D) float32
    k_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    v_cache: torch.Tensor,  # (num_blocks, block_size, n_kv, D)
    slot_mapping: torch.Tensor,  # (T,) int64; negative = skip
    k_scale: torch.Tensor | None = None,  # (num_blocks, block_size, n_kv) float16: FP8 caches only
    v_scale: torch.Tensor | None = None,
    is_neox: bool = True,
) -> torch.Tensor:  # (T, H, D): the rotated q; k (rotated) and v go into the cache
    q, k = reference.rotary_embedding(positions, q, k, cos_sin_cache, is_neox)
    reference.store_kv(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    return q
