"""The KV pool: per-layer key and value tensors of shape (num_blocks, block_size, n_kv, D).

Sizing: on CUDA, from the memory left after the weights and a warm-up forward of the largest
prefill step (times --cuda-memory-fraction, keeping a safety margin); on CPU, from
--max-batch-total-tokens or a default. The block bookkeeping lives in worker/block_manager.py.

With --kv-cache-dtype fp8_e4m3fn|fp8_e5m2 the pages hold FP8 values and each layer carries two
more tensors, (num_blocks, block_size, n_kv) float16: the scale of every (slot, KV head) row, set
by the KV store from the row's largest value (genfleet_kernels/reference.py `quantize_kv_rows`). A token
then costs D + 2 bytes per head instead of 2·D: 1.94x the tokens at D=128, 1.88x at D=64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = ["KVCache", "KVLayer", "CPU_DEFAULT_TOKENS", "bytes_per_block", "resolve_kv_dtype"]

CPU_DEFAULT_TOKENS = 32768
_GPU_MARGIN = 0.92  # share of the measured headroom handed to the pool (fragmentation, graphs)
_FP8 = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
_SCALE_DTYPE = torch.float16


class KVLayer(NamedTuple):
    k: torch.Tensor  # (num_blocks, block_size, n_kv, D)
    v: torch.Tensor  # (num_blocks, block_size, n_kv, D)
    k_scale: torch.Tensor | None = None  # (num_blocks, block_size, n_kv) float16; FP8 pages only
    v_scale: torch.Tensor | None = None


def resolve_kv_dtype(name: str | None, model_dtype: torch.dtype) -> torch.dtype:
    """--kv-cache-dtype (None: the model's dtype) as a torch dtype."""
    return model_dtype if name is None else _FP8[name]


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in _FP8.values()


def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    row = head_dim * dtype.itemsize + (_SCALE_DTYPE.itemsize if is_fp8(dtype) else 0)
    return 2 * num_layers * block_size * num_kv_heads * row


@dataclass
class KVCache:
    layers: list[KVLayer]
    num_blocks: int
    block_size: int

    @classmethod
    def allocate(
        cls, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
        dtype: torch.dtype, device: torch.device,
    ) -> KVCache:
        shape = (num_blocks, block_size, num_kv_heads, head_dim)

        def zeros(*dims: int, kind: torch.dtype) -> torch.Tensor:
            return torch.zeros(dims, dtype=kind, device=device)

        layers = []
        for _ in range(num_layers):
            scales = (zeros(*shape[:3], kind=_SCALE_DTYPE), zeros(*shape[:3], kind=_SCALE_DTYPE)) if is_fp8(dtype) else ()
            layers.append(KVLayer(zeros(*shape, kind=dtype), zeros(*shape, kind=dtype), *scales))
        return cls(layers, num_blocks, block_size)

    @staticmethod
    def blocks_for_gpu(free_bytes: int, per_block: int, fraction: float) -> int:
        return max(1, int(free_bytes * fraction * _GPU_MARGIN) // per_block)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size
