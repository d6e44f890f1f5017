"""Olmo2ForCausalLM: post-norm blocks (x + norm(attn(x)), then + norm(mlp(.))) with RMSNorm over
the whole q and k projections before rotary."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from worker.models.causal_lm import CausalLM
from worker.models.config import ModelConfig
from worker.models.layers import SelfAttention, make_norm

__all__ = ["Olmo2ForCausalLM"]


class PostNormDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, mlp: nn.Module) -> None:
        super().__init__()
        self.self_attn = SelfAttention(cfg, layer_idx)
        self.post_attention_layernorm = make_norm(cfg, cfg.hidden_size)
        self.mlp = mlp
        self.post_feedforward_layernorm = make_norm(cfg, cfg.hidden_size)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None, rope_tables: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The stream is hidden + residual (as the pre-norm layers hand it on); nothing normalises
        # a block's input, so the sum is taken here.
        x = hidden if residual is None else hidden + residual
        x = x + self.post_attention_layernorm(self.self_attn(positions, x, rope_tables))
        return self.post_feedforward_layernorm(self.mlp(x)), x


class Olmo2ForCausalLM(CausalLM):
    layer_cls = PostNormDecoderLayer

    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        bias = bool(raw.get("attention_bias", False))
        return {"qkv_bias": bias, "o_bias": bias, "qk_norm": "all"}
