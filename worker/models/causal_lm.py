"""The decoder-only causal LM shared by every family; each family file adds its quirks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from worker import ops
from worker.models.config import ModelConfig
from worker.models.layers import DecoderLayer, GatedMLP, make_norm
from worker.models.rotary import build_cos_sin_cache

__all__ = ["CausalLM", "ExpertSlot"]

# Where a per-expert checkpoint tensor goes: (our parameter, expert, shard, shards per expert).
ExpertSlot = tuple[str, int, int, int]


class CausalLM(nn.Module):
    # HF checkpoint names -> (our fused parameter, which shard of it). Families extend this.
    stacked_params: tuple[tuple[str, str, int], ...] = (
        ("q_proj", "qkv_proj", 0),
        ("k_proj", "qkv_proj", 1),
        ("v_proj", "qkv_proj", 2),
        ("gate_proj", "gate_up_proj", 0),
        ("up_proj", "gate_up_proj", 1),
    )
    layer_cls: type[nn.Module] = DecoderLayer
    has_experts = False  # mixture-of-experts families: their experts are stacked parameters

    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        """Family-specific ModelConfig fields read from the raw config.json."""
        return {}

    @staticmethod
    def text_config(raw: dict[str, Any]) -> dict[str, Any]:
        """The language model's part of config.json (a multimodal checkpoint nests it)."""
        return raw

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([self.layer_cls(cfg, i, self.build_mlp(cfg, i)) for i in range(cfg.num_layers)])
        self.norm = make_norm(cfg, cfg.hidden_size)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        ropes = [(cfg.rope_theta, cfg.rope_scaling)] + ([cfg.local_rope] if cfg.local_rope is not None else [])
        max_pos = cfg.max_position_embeddings
        cache = torch.stack([build_cos_sin_cache(cfg.head_dim, max_pos, theta, scaling) for theta, scaling in ropes])
        # (R, max_pos, D) float32: the global table, then the sliding-window layers' own where they differ.
        self.register_buffer("cos_sin_cache", cache, persistent=False)
        # Layers whose input (the residual stream before them) the forward also returns, after the
        # final hidden state, in this order: an EAGLE-3 draft fuses them (worker/speculative/eagle3.py).
        # Empty: the forward returns the final hidden state alone.
        self.aux_layers: tuple[int, ...] = ()

    def build_mlp(self, cfg: ModelConfig, layer_idx: int) -> nn.Module:
        return GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # (T, hidden)
        if self.cfg.embedding_scale != 1.0:  # rounded to the activations' dtype first, as Gemma does
            hidden = hidden * torch.tensor(self.cfg.embedding_scale, dtype=hidden.dtype)
        residual = None
        streams: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            if i in self.aux_layers:  # the residual stream entering layer i
                streams[i] = hidden if residual is None else hidden + residual
            hidden, residual = layer(positions, hidden, residual, self.cos_sin_cache)
        hidden, _ = self.norm(hidden, residual)
        if streams:
            return torch.cat([hidden, *(streams[i] for i in self.aux_layers)], dim=-1)  # (T, hidden * (1 + aux))
        return hidden  # (T, hidden)

    def compute_logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(N, vocab) float32 logits of hidden (N, hidden); into `out` when given (a CUDA graph's
        static buffer: worker/cuda_graphs.py), where the one-row LM head is chosen by GPU time."""
        logits = ops.linear(hidden, self.head_weight(), graphed=out is not None)  # (N, vocab)
        logits = logits.float() if out is None else out.copy_(logits)  # float32: the same cast either way
        if self.cfg.logits_scale != 1.0:
            logits = logits * self.cfg.logits_scale
        if self.cfg.final_softcap > 0:
            logits = torch.tanh(logits / self.cfg.final_softcap) * self.cfg.final_softcap
        if out is not None and logits is not out:
            out.copy_(logits)
            return out
        return logits

    def head_weight(self) -> torch.Tensor:
        """The LM head's (vocab, hidden) weight: the embedding's when tied."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def hf_to_param(self, hf_name: str) -> tuple[str, int | None]:
        """Map a checkpoint tensor name to (our parameter name, shard index or None)."""
        name = hf_name[len("model.") :] if hf_name.startswith("model.") else hf_name
        for hf_part, ours, shard in self.stacked_params:
            if f".{hf_part}." in name:
                return name.replace(f".{hf_part}.", f".{ours}."), shard
        return name, None

    def ignores(self, hf_name: str) -> bool:
        """A checkpoint tensor the served model does not use (a multimodal checkpoint's vision tower)."""
        return False

    def expert_slot(self, hf_name: str) -> ExpertSlot | None:
        """Where a per-expert checkpoint tensor goes (mixture-of-experts families); None otherwise."""
        return None
