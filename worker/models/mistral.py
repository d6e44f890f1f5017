"""MistralForCausalLM: Llama's layout; sliding-window configs are served with full attention."""

from __future__ import annotations

from typing import Any

from worker.models.llama import LlamaForCausalLM

__all__ = ["MistralForCausalLM"]


class MistralForCausalLM(LlamaForCausalLM):
    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        # NOTE: sliding_window is not applied: exact only while sequences fit the window.
        return {"qkv_bias": False, "o_bias": False}
