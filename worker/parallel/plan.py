"""Which part of the model rank r of N holds (Megatron's split), and the checkpoint slices that fill it.

- Column-parallel (split along the output): q/k/v of `qkv_proj` and gate/up of `gate_up_proj`,
  each fused part sliced on its own, and a plain MLP's `c_fc`; their biases are sliced with them.
- Row-parallel (split along the input): `o_proj`, `down_proj` and `c_proj`; each rank's partial sums are
  added by one all-reduce (worker/parallel/layers.py). A row-parallel bias is loaded on rank 0
  only (zeros elsewhere), so the sum counts it once.
- Vocab-parallel: the embedding's and the LM head's rows, `vocab_per_rank` each (the last rank's
  padded with zero rows); the logits are gathered to rank 0 and cut back to the vocabulary.
- Mixture of experts, tensor-parallel inside each expert (as TGI and vLLM): every rank holds every
  expert, with its gate/up rows and down columns of that expert's FFN (`moe_ffn`), and of the
  shared expert's (`shared_ffn`, Qwen2-MoE); the router and the shared expert's gate are
  replicated, so every rank routes each token alike, and one all-reduce after the whole MoE block
  (worker/parallel/layers.py) adds the ranks' partial sums of routed and shared experts together.
- Query heads go out in contiguous, near-equal ranges (9 heads on 2 ranks: 5 and 4), and so do
  the FFN's columns: no count has to divide N.
- KV heads: each rank keeps the KV heads its query heads read. The attention kernels map local
  query head i to local KV head i // (H_local / kv_local), so a rank whose query heads straddle
  groups unevenly keeps some KV heads twice (`kv_heads` repeats them): a model whose KV heads do
  not divide N, or number fewer than N, still serves. Every rank stores the KV of its own heads
  for every token, so the block tables, and the one block manager on rank 0, are the same for all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from worker.models.config import ModelConfig, UnsupportedModel

if TYPE_CHECKING:
    from worker.models.causal_lm import ExpertSlot

__all__ = ["ShardPlan", "split_range"]


def split_range(total: int, parts: int, index: int) -> tuple[int, int]:
    """[start, end) of part `index` when `total` items go out in `parts` contiguous near-equal ranges."""
    base, extra = divmod(total, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def _local_kv_heads(q_start: int, q_end: int, group: int) -> tuple[int, ...]:
    # The fewest local KV heads m (a divisor of the local query heads) such that every block of
    # H_local / m consecutive query heads reads one KV head: the kernels' grouping then holds.
    kv_of = [h // group for h in range(q_start, q_end)]
    local = len(kv_of)
    for m in range(1, local + 1):
        if local % m:
            continue
        per = local // m
        if all(kv_of[i] == kv_of[(i // per) * per] for i in range(local)):
            return tuple(kv_of[j * per] for j in range(m))
    raise AssertionError("unreachable: one KV head per query head always groups")


@dataclass(frozen=True)
class ShardPlan:
    rank: int
    world_size: int
    head_dim: int
    num_heads: int  # the model's query heads
    num_kv_heads: int  # the model's KV heads
    q_heads: tuple[int, int]  # [start, end) of this rank's query heads
    kv_heads: tuple[int, ...]  # the model's KV head behind each local KV head (repeats when replicated)
    ffn: tuple[int, int]  # [start, end) of this rank's FFN columns
    intermediate_size: int  # the model's FFN width
    vocab_size: int  # the model's vocabulary
    vocab_per_rank: int  # rows of the embedding / LM head on every rank (the last one padded)
    moe_ffn: tuple[int, int] = (0, 0)  # [start, end) of this rank's columns of each expert's FFN
    shared_ffn: tuple[int, int] = (0, 0)  # [start, end) of this rank's columns of the shared expert's
    shared_intermediate_size: int = 0  # the shared expert's FFN width

    @classmethod
    def build(cls, cfg: ModelConfig, rank: int, world_size: int) -> ShardPlan:
        name = cfg.architecture or "the model"
        moe = cfg.moe
        if moe is not None:
            for what, width in (("expert", moe.intermediate_size), ("shared expert", moe.shared_intermediate_size)):
                if 0 < width < world_size:
                    raise UnsupportedModel(f"{name}'s {what} FFN width {width} cannot shard over {world_size}")
        if cfg.qk_norm == "all":
            # OLMo 2 normalises q and k over the whole projection: every rank would need all heads.
            raise UnsupportedModel(f"{name}: q/k norms over the whole projection cannot be sharded yet")
        if cfg.num_heads < world_size:
            raise UnsupportedModel(f"{name} has {cfg.num_heads} attention heads: it cannot shard over {world_size}")
        if cfg.intermediate_size < world_size:
            raise UnsupportedModel(f"{name}'s FFN width {cfg.intermediate_size} cannot shard over {world_size}")
        if cfg.num_heads % cfg.num_kv_heads:
            raise UnsupportedModel(f"{name}: {cfg.num_heads} heads are not a multiple of {cfg.num_kv_heads} KV heads")
        q_heads = split_range(cfg.num_heads, world_size, rank)
        return cls(
            rank=rank,
            world_size=world_size,
            head_dim=cfg.head_dim,
            num_heads=cfg.num_heads,
            num_kv_heads=cfg.num_kv_heads,
            q_heads=q_heads,
            kv_heads=_local_kv_heads(*q_heads, cfg.num_heads // cfg.num_kv_heads),
            ffn=split_range(cfg.intermediate_size, world_size, rank),
            intermediate_size=cfg.intermediate_size,
            vocab_size=cfg.vocab_size,
            vocab_per_rank=-(-cfg.vocab_size // world_size),
            moe_ffn=split_range(moe.intermediate_size, world_size, rank) if moe is not None else (0, 0),
            shared_ffn=split_range(moe.shared_intermediate_size, world_size, rank) if moe is not None else (0, 0),
            shared_intermediate_size=moe.shared_intermediate_size if moe is not None else 0,
        )

    @property
    def vocab_start(self) -> int:
        return self.rank * self.vocab_per_rank

    def local_config(self, cfg: ModelConfig) -> ModelConfig:
        """The architecture of this rank's part: the model classes build it as they build a whole model."""
        moe = cfg.moe
        if moe is not None:
            moe = dataclasses.replace(moe, intermediate_size=self.moe_ffn[1] - self.moe_ffn[0],
                                      shared_intermediate_size=self.shared_ffn[1] - self.shared_ffn[0])
        return dataclasses.replace(
            cfg,
            num_heads=self.q_heads[1] - self.q_heads[0],
            num_kv_heads=len(self.kv_heads),
            intermediate_size=self.ffn[1] - self.ffn[0],
            vocab_size=self.vocab_per_rank,
            moe=moe,
        )

    def _ffn_of(self, name: str) -> tuple[tuple[int, int], int]:
        # (this rank's columns, the full width) of a dense MLP, or of the shared expert beside a MoE
        # layer's experts.
        if ".shared_expert." in name:
            return self.shared_ffn, self.shared_intermediate_size
        return self.ffn, self.intermediate_size

    # -- checkpoint slices ---------------------------------------------------------------------
    def rows(self, name: str, shard: int | None) -> list[tuple[int, int]] | None:
        """The checkpoint rows (dim 0) of our parameter `name` (its fused part `shard`) this rank
        reads, as [start, end) ranges; None when it reads the tensor whole or by columns."""
        module, kind = name.rsplit(".", 2)[-2:]
        d = self.head_dim
        q = [(self.q_heads[0] * d, self.q_heads[1] * d)]
        kv = [(h * d, (h + 1) * d) for h in self.kv_heads]
        if module == "qkv_proj":
            parts = [q, kv, kv]
            if shard is not None:
                return parts[shard]
            # A checkpoint that stores q, k and v fused (Phi-3): each part at its offset.
            offsets = (0, self.num_heads * d, (self.num_heads + self.num_kv_heads) * d)
            return [(a + off, b + off) for off, part in zip(offsets, parts, strict=True) for a, b in part]
        if module == "c_fc":
            return [self.ffn]
        if module == "gate_up_proj":
            ffn, width = self._ffn_of(name)
            if shard is not None:
                return [ffn]
            return [ffn, (ffn[0] + width, ffn[1] + width)]
        if module in ("embed_tokens", "lm_head") and kind == "weight":
            return [(self.vocab_start, min(self.vocab_size, self.vocab_start + self.vocab_per_rank))]
        return None

    def columns(self, name: str) -> tuple[int, int] | None:
        """The checkpoint columns (dim 1) of a row-parallel weight this rank reads, else None."""
        module, kind = name.rsplit(".", 2)[-2:]
        if kind != "weight":
            return None
        if module == "o_proj":
            return self.q_heads[0] * self.head_dim, self.q_heads[1] * self.head_dim
        if module in ("down_proj", "c_proj"):
            return self._ffn_of(name)[0]
        return None

    def read_expert(self, f: Any, hf_name: str, slot: ExpertSlot) -> torch.Tensor:
        """This rank's part of one expert's projection: its FFN rows of gate or up (w13), its
        FFN columns of down (w2)."""
        sliced = f.get_slice(hf_name)
        start, end = self.moe_ffn
        if slot[0].endswith(".w2"):
            return sliced[:, start:end]  # type: ignore[no-any-return]
        return sliced[start:end]  # type: ignore[no-any-return]

    def read(self, f: Any, hf_name: str, name: str, shard: int | None) -> torch.Tensor:
        """This rank's part of checkpoint tensor `hf_name` (our `name`), read from the safetensors
        file `f` by slices: no rank reads the whole model."""
        sliced = f.get_slice(hf_name)
        module, kind = name.rsplit(".", 2)[-2:]
        rows = self.rows(name, shard)
        if rows is not None:
            tensor = torch.cat([sliced[a:b] for a, b in rows])
            if module in ("embed_tokens", "lm_head") and tensor.shape[0] < self.vocab_per_rank:
                pad = tensor.new_zeros(self.vocab_per_rank - tensor.shape[0], *tensor.shape[1:])
                tensor = torch.cat([tensor, pad])  # rows past the vocabulary: cut from the logits
            return tensor
        columns = self.columns(name)
        if columns is not None:
            return sliced[:, columns[0] : columns[1]]  # type: ignore[no-any-return]
        tensor = sliced[:]
        if module in ("o_proj", "down_proj", "c_proj") and kind == "bias" and self.rank != 0:
            return torch.zeros_like(tensor)  # a row-parallel bias counts once, on rank 0
        return tensor  # type: ignore[no-any-return]
