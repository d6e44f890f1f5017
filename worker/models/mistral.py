"""MistralForCausalLM: Llama's layout, every layer under `sliding_window` where the config sets one
(as transformers, which reads no `use_sliding_window` or `layer_types` for Mistral)."""

from __future__ import annotations

from typing import Any

from worker.models.llama import LlamaForCausalLM
from worker.models.windows import uniform_windows

__all__ = ["MistralForCausalLM"]


class MistralForCausalLM(LlamaForCausalLM):
    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        return {"qkv_bias": False, "o_bias": False, "layer_windows": uniform_windows(raw)}
