"""The sparse mixture-of-experts MLP: a router picks each token's top-k experts, the fused MoE
kernel runs them (genfleet_kernels/fused_moe.py; the per-expert loop of genfleet_kernels/reference.py on CPU), and
an optional shared expert, gated by a sigmoid, adds to every token (Qwen2-MoE).

Experts are stacked parameters, `w13` (E, 2I, H) with each expert's gate rows then its up rows,
and `w2` (E, H, I); `expert_slot` says where a checkpoint's per-expert tensor goes. Under a
method that quantizes experts, each stack is a worker/quant/experts.py `QuantExperts` instead.
The routers stay dense under every method, as the quantized checkpoints keep them. Routing is
tensor ops with fixed shapes (softmax, top-k): no host sync, so a decode step replays in a graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from genfleet_kernels.reference import QuantizedExperts
from worker import ops
from worker.models.causal_lm import CausalLM, ExpertSlot
from worker.models.config import ModelConfig, MoEConfig, UnsupportedModel
from worker.models.layers import GatedMLP, linear

if TYPE_CHECKING:
    from worker.quant.experts import QuantExperts

__all__ = ["SparseMoE", "MoECausalLM", "Router", "route", "expert_slot", "moe_config"]


class Router(nn.Linear):
    """A routing linear (experts' logits, a shared expert's gate): never quantized, as its own
    type so that worker/quant `quantizable_linears` (plain nn.Linear only) passes it by."""


def route(router_logits: torch.Tensor, top_k: int, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, E) logits -> (T, k) float32 routing weights and (T, k) expert ids, softmax in float32."""
    probs = torch.softmax(router_logits.float(), dim=-1)  # (T, E)
    weights, ids = probs.topk(top_k, dim=-1)  # (T, k), (T, k)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


class SparseMoE(nn.Module):
    def __init__(self, cfg: ModelConfig, moe: MoEConfig, stacks_device: torch.device | None = None) -> None:
        """`stacks_device`: meta when the experts come quantized from the checkpoint (their dense
        stacks are then shapes only, and loading never holds the dense size)."""
        super().__init__()
        self.moe = moe
        hidden, inter, experts = cfg.hidden_size, moe.intermediate_size, moe.num_experts
        self.gate = Router(hidden, experts, bias=False)
        # Initialised as nn.Linear's weights are: random-weight runs (benchmarks) read them as they are.
        w13 = torch.empty(experts, 2 * inter, hidden, device=stacks_device).uniform_(-(hidden**-0.5), hidden**-0.5)
        w2 = torch.empty(experts, hidden, inter, device=stacks_device).uniform_(-(inter**-0.5), inter**-0.5)
        self.w13: nn.Parameter | QuantExperts = nn.Parameter(w13)  # (E, 2I, H)
        self.w2: nn.Parameter | QuantExperts = nn.Parameter(w2)  # (E, H, I)
        self.shared_expert = GatedMLP(hidden, moe.shared_intermediate_size) if moe.shared_intermediate_size else None
        self.shared_expert_gate = Router(hidden, 1, bias=False) if moe.shared_intermediate_size else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = route(linear(x, self.gate), self.moe.top_k, self.moe.normalize_top_k)  # (T, k) each
        out = ops.fused_moe(x, _stack(self.w13), _stack(self.w2), weights, ids)  # (T, hidden)
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            out = out + torch.sigmoid(linear(x, self.shared_expert_gate)) * self.shared_expert(x)
        return out  # type: ignore[no-any-return]


def _stack(w: nn.Parameter | QuantExperts) -> torch.Tensor | QuantizedExperts:  # what ops.fused_moe takes
    return w if isinstance(w, nn.Parameter) else w.weights()


def expert_slot(name: str, experts_part: str, names: dict[str, int]) -> ExpertSlot | None:
    """A checkpoint name `...{experts_part}.{e}.{proj}.{tensor}` -> where it goes in SparseMoE.

    `name` is already mapped to our module path (its MLP is `mlp`); `names` gives each projection
    its shard of w13 (0 gate, 1 up) or -1 for w2 (the down projection). `tensor` is `weight`, or
    a quantized format's (`qweight`, `scales`, ...).
    """
    head, sep, tail = name.partition(f".{experts_part}.")
    if not sep:
        return None
    expert, _, rest = tail.partition(".")
    proj, _, tensor = rest.partition(".")
    if proj not in names or not tensor:
        return None
    shard = names[proj]
    return (f"{head}.w2", int(expert), 0, 1) if shard < 0 else (f"{head}.w13", int(expert), shard, 2)


class MoECausalLM(CausalLM):
    """A family whose MLPs are SparseMoE (a dense GatedMLP where `sparse_layers` says so)."""

    has_experts = True
    hf_mlp = "mlp"  # the checkpoint's name of a layer's MLP (Mixtral: block_sparse_moe)
    expert_names: dict[str, int] = {"gate_proj": 0, "up_proj": 1, "down_proj": -1}

    def __init__(self, cfg: ModelConfig, *, quantized_experts: bool = False) -> None:
        # quantized_experts: the checkpoint's experts load quantized (worker/weights.py puts them in).
        self.stacks_device = torch.device("meta") if quantized_experts else None
        super().__init__(cfg)

    def build_mlp(self, cfg: ModelConfig, layer_idx: int) -> nn.Module:
        moe = cfg.moe
        assert moe is not None, "a mixture-of-experts family has a MoEConfig"
        if moe.sparse_layers and not moe.sparse_layers[layer_idx]:
            return GatedMLP(cfg.hidden_size, cfg.intermediate_size)
        return SparseMoE(cfg, moe, self.stacks_device)

    def hf_to_param(self, hf_name: str) -> tuple[str, int | None]:
        return super().hf_to_param(hf_name.replace(f".{self.hf_mlp}.", ".mlp."))

    def expert_slot(self, hf_name: str) -> ExpertSlot | None:
        name = hf_name.removeprefix("model.").replace(f".{self.hf_mlp}.", ".mlp.")
        return expert_slot(name, "experts", self.expert_names)


def moe_config(raw: dict[str, Any], experts_key: str, **extra: Any) -> MoEConfig:
    if raw.get("hidden_act", "silu") != "silu":
        raise UnsupportedModel(f"{raw.get('architectures')}: experts with {raw.get('hidden_act')!r} are not supported")
    return MoEConfig(
        num_experts=int(raw[experts_key]),
        top_k=int(raw["num_experts_per_tok"]),
        intermediate_size=int(raw.get("moe_intermediate_size") or raw["intermediate_size"]),
        **extra,
    )
