"""LlamaForCausalLM: Llama 2, 3 and 3.1 (rope scaling), SmolLM2; tied embeddings when configured."""

from __future__ import annotations

from typing import Any

from worker.models.causal_lm import CausalLM

__all__ = ["LlamaForCausalLM"]


class LlamaForCausalLM(CausalLM):
    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        bias = bool(raw.get("attention_bias", False))
        return {"qkv_bias": bias, "o_bias": bias}
