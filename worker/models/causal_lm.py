"""The decoder-only causal LM shared by the Llama-like families; each family file adds its quirks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from worker import ops
from worker.models.config import ModelConfig
from worker.models.layers import DecoderLayer, RMSNorm
from worker.models.rotary import build_cos_sin_cache

__all__ = ["CausalLM"]


class CausalLM(nn.Module):
    # HF checkpoint names -> (our fused parameter, which shard of it). Families extend this.
    stacked_params: tuple[tuple[str, str, int], ...] = (
        ("q_proj", "qkv_proj", 0),
        ("k_proj", "qkv_proj", 1),
        ("v_proj", "qkv_proj", 2),
        ("gate_proj", "gate_up_proj", 0),
        ("up_proj", "gate_up_proj", 1),
    )

    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        """Family-specific ModelConfig fields read from the raw config.json."""
        return {}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg, i) for i in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        cache = build_cos_sin_cache(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        self.register_buffer("cos_sin_cache", cache, persistent=False)  # (max_pos, D) float32

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # (T, hidden)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, self.cos_sin_cache)
        hidden, _ = self.norm(hidden, residual)
        return hidden  # (T, hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return ops.linear(hidden, weight).float()  # (N, vocab) float32

    def hf_to_param(self, hf_name: str) -> tuple[str, int | None]:
        """Map a checkpoint tensor name to (our parameter name, shard index or None)."""
        name = hf_name[len("model.") :] if hf_name.startswith("model.") else hf_name
        for hf_part, ours, shard in self.stacked_params:
            if f".{hf_part}." in name:
                return name.replace(f".{hf_part}.", f".{ours}."), shard
        return name, None
