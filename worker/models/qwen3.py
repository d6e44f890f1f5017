"""Qwen3ForCausalLM: per-head RMSNorm on q and k before rotary; optional attention bias; Qwen2's
sliding windows."""

from __future__ import annotations

from typing import Any

from worker.models.causal_lm import CausalLM
from worker.models.windows import qwen_windows

__all__ = ["Qwen3ForCausalLM"]


class Qwen3ForCausalLM(CausalLM):
    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        bias = bool(raw.get("attention_bias", False))
        return {"qkv_bias": bias, "o_bias": bias, "qk_norm": "head", "layer_windows": qwen_windows(raw)}
