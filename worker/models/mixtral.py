"""MixtralForCausalLM: Mistral's attention with a sparse MoE MLP in every layer (`block_sparse_moe`:
router `gate`, experts' w1 = gate, w3 = up, w2 = down), top-k routing renormalized; Mistral's
sliding window on every layer where the config sets one."""

from __future__ import annotations

from typing import Any

from worker.models.moe import MoECausalLM, moe_config
from worker.models.windows import uniform_windows

__all__ = ["MixtralForCausalLM"]


class MixtralForCausalLM(MoECausalLM):
    hf_mlp = "block_sparse_moe"
    expert_names = {"w1": 0, "w3": 1, "w2": -1}

    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        return {"moe": moe_config(raw, "num_local_experts", normalize_top_k=True), "layer_windows": uniform_windows(raw)}
