"""Qwen2MoeForCausalLM and Qwen3MoeForCausalLM: Qwen2's / Qwen3's attention with sparse MoE MLPs.

Qwen2-MoE adds a shared expert (sigmoid-gated) to every MoE layer and leaves the top-k weights
unnormalized by default; both put experts in every `decoder_sparse_step`-th layer except
`mlp_only_layers`, which keep a dense MLP of `intermediate_size`. With `use_sliding_window`,
Qwen2-MoE slides its even layers below `max_window_layers` (or those `layer_types` names), Qwen3-MoE
every layer, as transformers does.
"""

from __future__ import annotations

from typing import Any

from worker.models.moe import MoECausalLM, moe_config
from worker.models.windows import typed_windows, uniform_windows

__all__ = ["Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"]


def _sparse_layers(raw: dict[str, Any]) -> tuple[bool, ...]:
    step = int(raw.get("decoder_sparse_step") or 1)
    dense = set(raw.get("mlp_only_layers") or [])
    return tuple(i not in dense and (i + 1) % step == 0 for i in range(int(raw["num_hidden_layers"])))


def _experts(raw: dict[str, Any]) -> str:
    return "num_experts" if raw.get("num_experts") else "num_local_experts"


class Qwen2MoeForCausalLM(MoECausalLM):
    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        moe = moe_config(
            raw, _experts(raw), normalize_top_k=bool(raw.get("norm_topk_prob", False)),
            shared_intermediate_size=int(raw.get("shared_expert_intermediate_size") or 0),
            sparse_layers=_sparse_layers(raw),
        )
        below = int(raw.get("max_window_layers", 28))
        windows = typed_windows(raw, lambda i: i % 2 == 0 and i < below, gated=True)
        return {"qkv_bias": bool(raw.get("qkv_bias", True)), "o_bias": False, "moe": moe, "layer_windows": windows}


class Qwen3MoeForCausalLM(MoECausalLM):
    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        moe = moe_config(raw, _experts(raw), normalize_top_k=bool(raw.get("norm_topk_prob", True)),
                         sparse_layers=_sparse_layers(raw))
        bias = bool(raw.get("attention_bias", False))
        return {"qkv_bias": bias, "o_bias": bias, "qk_norm": "head", "moe": moe,
                "layer_windows": uniform_windows(raw, gated=True)}
