"""Qwen2ForCausalLM: Llama's layout with a bias on q, k and v (not on o); with `use_sliding_window`,
the layers from `max_window_layers` on slide (or those `layer_types` names)."""

from __future__ import annotations

from typing import Any

from worker.models.causal_lm import CausalLM
from worker.models.windows import qwen_windows

__all__ = ["Qwen2ForCausalLM"]


class Qwen2ForCausalLM(CausalLM):
    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        return {"qkv_bias": True, "o_bias": False, "layer_windows": qwen_windows(raw)}
