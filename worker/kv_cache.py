"""The KV pool: per-layer key and value tensors of shape (num_blocks, block_size, n_kv, D).

Sizing: on CUDA, from the memory left after the weights and a warm-up forward of the largest
prefill step (times --cuda-memory-fraction, keeping a safety margin); on CPU, from
--max-batch-total-tokens or a default. The block bookkeeping lives in worker/block_manager.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["KVCache", "CPU_DEFAULT_TOKENS", "bytes_per_block"]

CPU_DEFAULT_TOKENS = 32768
_GPU_MARGIN = 0.92  # share of the measured headroom handed to the pool (fragmentation, graphs)


def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


@dataclass
class KVCache:
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k, v), each (num_blocks, block_size, n_kv, D)
    num_blocks: int
    block_size: int

    @classmethod
    def allocate(
        cls, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
        dtype: torch.dtype, device: torch.device,
    ) -> KVCache:
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        layers = [
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(num_layers)
        ]
        return cls(layers, num_blocks, block_size)

    @staticmethod
    def blocks_for_gpu(free_bytes: int, per_block: int, fraction: float) -> int:
        return max(1, int(free_bytes * fraction * _GPU_MARGIN) // per_block)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size
