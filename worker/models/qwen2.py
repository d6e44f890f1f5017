"""Qwen2ForCausalLM: Llama's layout with a bias on q, k and v (not on o)."""

from __future__ import annotations

from typing import Any

from worker.models.causal_lm import CausalLM

__all__ = ["Qwen2ForCausalLM"]


class Qwen2ForCausalLM(CausalLM):
    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        return {"qkv_bias": True, "o_bias": False}
