"""Gemma2ForCausalLM: Gemma with sandwich norms, alternating sliding-window and global layers,
attention and final-logit soft-capping, and a q.k scale of query_pre_attn_scalar ** -0.5."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from worker.models.causal_lm import CausalLM
from worker.models.config import ModelConfig
from worker.models.gemma import gemma_common
from worker.models.layers import DecoderLayer, make_norm
from worker.models.windows import typed_windows

__all__ = ["Gemma2ForCausalLM", "SandwichDecoderLayer"]


class SandwichDecoderLayer(DecoderLayer):
    """x + post_norm(attn(norm(x))), then + post_ff_norm(mlp(pre_ff_norm(.))) (Gemma 2 and 3)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, mlp: nn.Module) -> None:
        super().__init__(cfg, layer_idx, mlp)
        self.pre_feedforward_layernorm = make_norm(cfg, cfg.hidden_size)
        self.post_feedforward_layernorm = make_norm(cfg, cfg.hidden_size)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None, rope_tables: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = self.normed_input(hidden, residual)
        hidden = self.post_attention_layernorm(self.self_attn(positions, hidden, rope_tables))
        hidden, residual = self.pre_feedforward_layernorm(hidden, residual)
        return self.post_feedforward_layernorm(self.mlp(hidden)), residual


class Gemma2ForCausalLM(CausalLM):
    layer_cls = SandwichDecoderLayer

    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        return {
            **gemma_common(raw),
            "attn_scale": float(raw.get("query_pre_attn_scalar") or raw["head_dim"]) ** -0.5,
            "attn_softcap": float(raw.get("attn_logit_softcapping") or 0.0),
            "final_softcap": float(raw.get("final_logit_softcapping") or 0.0),
            "layer_windows": typed_windows(raw, lambda i: (i + 1) % 2 != 0),  # every second layer global
        }
