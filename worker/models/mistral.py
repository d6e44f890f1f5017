"""MistralForCausalLM: Llama's layout; a sliding window caps the served sequence length."""

from __future__ import annotations

from typing import Any

from worker.models.llama import LlamaForCausalLM

__all__ = ["MistralForCausalLM"]


class MistralForCausalLM(LlamaForCausalLM):
    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        # Within the window, sliding attention equals full attention: serve up to its length.
        window = raw.get("sliding_window")
        return {"qkv_bias": False, "o_bias": False, "sliding_window": int(window) if window else None}
