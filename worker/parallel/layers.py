"""The sharded model's two changes to a family's own modules, made after it is built at its rank's size.

- The embedding becomes vocab-parallel: each rank looks up only the ids in its rows, zeros for the
  rest, and an all-reduce sums the ranks' rows into the full embedding.
- `o_proj` and `down_proj` (row-parallel: each rank multiplies its slice of the input) are wrapped
  in `RowParallel`, which all-reduces their partial outputs: one all-reduce per attention and per
  MLP. It wraps whatever module is in that place, a quantized linear as well as nn.Linear, and the
  all-reduce runs inside the decode CUDA graphs like the rest of the forward. A mixture-of-experts
  MLP is wrapped whole: its experts' (and shared expert's) down projections are row-parallel
  slices, all scaled by replicated routing weights, so one all-reduce after the block sums them.
Column-parallel linears need nothing: they are built narrower (ShardPlan.local_config) and load
their slices.
"""

from __future__ import annotations

import torch
from torch import nn

from worker.models import CausalLM
from worker.models.layers import linear
from worker.models.moe import SparseMoE
from worker.quant import QuantizationError, QuantMethod
from worker.parallel.group import ShardGroup
from worker.parallel.plan import ShardPlan

__all__ = ["VocabParallelEmbedding", "RowParallel", "shard_model", "add_all_reduces", "refuse_unshardable", "ROW_PARALLEL"]

ROW_PARALLEL = ("self_attn.o_proj", "mlp.down_proj", "mlp.c_proj")  # per decoder layer, where present


class VocabParallelEmbedding(nn.Module):
    def __init__(self, weight: nn.Parameter, start: int, group: ShardGroup) -> None:
        super().__init__()
        self.weight = weight  # (vocab_per_rank, hidden): the rows of ids start .. start + vocab_per_rank
        self.start = start
        self.group = group

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.start  # (T,)
        mine = (local >= 0) & (local < self.weight.shape[0])  # (T,) bool
        hidden = nn.functional.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight)  # (T, hidden)
        hidden = hidden * mine.unsqueeze(1).to(hidden.dtype)
        return self.group.all_reduce(hidden)


class RowParallel(nn.Module):
    def __init__(self, inner: nn.Module, group: ShardGroup) -> None:
        super().__init__()
        self.inner = inner  # this rank's columns of the linear (its bias on rank 0 only), or a MoE block
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(linear(x, self.inner))  # (T, out): the sum over ranks


def shard_model(model: CausalLM, plan: ShardPlan, group: ShardGroup, quant: QuantMethod | None) -> None:
    """Swap in the vocab-parallel embedding (before the weights load: its parameter keeps its name)."""
    refuse_unshardable(quant, group.world_size)
    # The built embedding's parameter, as initialised (random-weight benchmarks read it as it is).
    model.embed_tokens = VocabParallelEmbedding(model.embed_tokens.weight, plan.vocab_start, group)


# On-load methods with one scale per output row (worker/quant/w8.py): each rank quantizes its slice
# of the dense weight (a row-parallel slice gets scales of its own rows of its columns).
SHARDABLE_QUANTIZE = ("fp8", "eetq", "bitsandbytes")


def refuse_unshardable(quant: QuantMethod | None, world_size: int) -> None:
    """A pre-quantized checkpoint's packed layout (groups along the input, act-order permutations)
    and the 4-bit codebooks' blocks are not sliced here: refused rather than served wrong."""
    if quant is not None and quant.name not in SHARDABLE_QUANTIZE:
        raise QuantizationError(
            f"--quantize {quant.name} cannot be sharded yet (--num-shard {world_size}): serve it unsharded, or "
            f"shard the unquantized checkpoint and quantize each rank's slice on load (--quantize "
            f"{' | '.join(SHARDABLE_QUANTIZE)})"
        )


def add_all_reduces(model: CausalLM, group: ShardGroup) -> None:
    """Wrap the row-parallel linears (after the weights load and quantized modules replace dense ones)."""
    for layer in model.layers:
        for path in ROW_PARALLEL:
            parent, _, name = path.rpartition(".")
            owner = layer.get_submodule(parent)
            if hasattr(owner, name):
                setattr(owner, name, RowParallel(getattr(owner, name), group))
        if isinstance(layer.mlp, SparseMoE):
            layer.mlp = RowParallel(layer.mlp, group)
