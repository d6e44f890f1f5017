"""Phi3ForCausalLM: checkpoints already store fused `qkv_proj` and `gate_up_proj`; Phi-3.5 and
Phi-4 mini scale rope with LongRoPE (worker/models/rotary.py)."""

from __future__ import annotations

from typing import Any

from worker.models.causal_lm import CausalLM
from worker.models.config import rope_of

__all__ = ["Phi3ForCausalLM"]


class Phi3ForCausalLM(CausalLM):
    stacked_params = ()  # nothing to fuse: the names already match ours

    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {"qkv_bias": False, "o_bias": False}
        _, scaling = rope_of(raw, dict(raw.get("rope_parameters") or {}))
        if scaling and (scaling.get("rope_type") or scaling.get("type")) == "longrope":
            # Phi-3.5 / Phi-4 configs name the original context beside the scaling, not inside it.
            original = scaling.get("original_max_position_embeddings", raw.get("original_max_position_embeddings"))
            fields["rope_scaling"] = {**scaling, "original_max_position_embeddings": original}
        return fields
