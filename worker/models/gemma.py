"""GemmaForCausalLM (Gemma 1): norms that store w - 1, embeddings scaled by sqrt(hidden), GeGLU, tied head."""

from __future__ import annotations

from typing import Any

from worker.models.causal_lm import CausalLM

__all__ = ["GemmaForCausalLM", "gemma_common"]


def gemma_common(raw: dict[str, Any]) -> dict[str, Any]:
    # Every Gemma runs GELU's tanh form: transformers reads a legacy "gelu" as it too.
    return {
        "norm_offset": 1.0,
        "embedding_scale": float(raw["hidden_size"]) ** 0.5,
        "hidden_act": "gelu_tanh",
        "tie_word_embeddings": bool(raw.get("tie_word_embeddings", True)),
        "qkv_bias": bool(raw.get("attention_bias", False)),
        "o_bias": bool(raw.get("attention_bias", False)),
    }


class GemmaForCausalLM(CausalLM):
    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        return gemma_common(raw)
