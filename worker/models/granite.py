"""GraniteForCausalLM: Llama's layout with four multipliers (embeddings, residual branches, the q.k
scale, and the logits, which are divided by `logits_scaling`)."""

from __future__ import annotations

from typing import Any

from worker.models.causal_lm import CausalLM
from worker.models.config import UnsupportedModel

__all__ = ["GraniteForCausalLM"]


class GraniteForCausalLM(CausalLM):
    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        if raw.get("mlp_bias"):
            raise UnsupportedModel("GraniteForCausalLM: a bias on the MLP (mlp_bias) is not supported")
        bias = bool(raw.get("attention_bias", False))
        return {
            "qkv_bias": bias,
            "o_bias": bias,
            "embedding_scale": float(raw.get("embedding_multiplier", 1.0)),
            "residual_scale": float(raw.get("residual_multiplier", 1.0)),
            "attn_scale": float(raw.get("attention_multiplier", 1.0)),
            "logits_scale": 1.0 / float(raw.get("logits_scaling", 1.0)),
        }
