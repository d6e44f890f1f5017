"""Phi3ForCausalLM: checkpoints already store fused `qkv_proj` and `gate_up_proj`."""

from __future__ import annotations

from typing import Any

from worker.models.causal_lm import CausalLM

__all__ = ["Phi3ForCausalLM"]


class Phi3ForCausalLM(CausalLM):
    stacked_params = ()  # nothing to fuse: the names already match ours

    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        return {"qkv_bias": False, "o_bias": False}
