"""CohereForCausalLM (Command-R): parallel blocks (x + attn(ln(x)) + mlp(ln(x)), one LayerNorm
without a bias), interleaved rotary pairs, logits times `logit_scale`, tied head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from worker.models.causal_lm import CausalLM
from worker.models.config import ModelConfig, UnsupportedModel
from worker.models.layers import SelfAttention, make_norm

__all__ = ["CohereForCausalLM"]


class ParallelDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, mlp: nn.Module) -> None:
        super().__init__()
        self.input_layernorm = make_norm(cfg, cfg.hidden_size)
        self.self_attn = SelfAttention(cfg, layer_idx)
        self.mlp = mlp

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None, rope_tables: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            normed, residual = self.input_layernorm(hidden), hidden
        else:
            normed, residual = self.input_layernorm(hidden, residual)
        return self.self_attn(positions, normed, rope_tables) + self.mlp(normed), residual


class CohereForCausalLM(CausalLM):
    layer_cls = ParallelDecoderLayer

    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        if raw.get("use_qk_norm"):
            raise UnsupportedModel("CohereForCausalLM: per-head q/k LayerNorm (use_qk_norm) is not supported")
        bias = bool(raw.get("attention_bias", False))
        return {
            "qkv_bias": bias,
            "o_bias": bias,
            "layer_norm": True,
            "layer_norm_bias": False,
            "rms_norm_eps": float(raw.get("layer_norm_eps", 1e-5)),
            "rope_interleaved": True,
            "logits_scale": float(raw.get("logit_scale", 1.0)),
            "tie_word_embeddings": bool(raw.get("tie_word_embeddings", True)),
        }
