"""MistralForCausalLM: Llama's layout (its sliding window caps the context: common/context_length.py)."""

from __future__ import annotations

from typing import Any

from worker.models.llama import LlamaForCausalLM

__all__ = ["MistralForCausalLM"]


class MistralForCausalLM(LlamaForCausalLM):
    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        return {"qkv_bias": False, "o_bias": False}
