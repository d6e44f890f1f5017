"""Gemma2ForCausalLM: Gemma with sandwich norms, alternating sliding-window and global layers,
attention and final-logit soft-capping, and a q.k scale of query_pre_attn_scalar ** -0.5."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from worker.models.causal_lm import CausalLM
from worker.models.config import ModelConfig, UnsupportedModel
from worker.models.gemma import gemma_common
from worker.models.layers import DecoderLayer, make_norm

__all__ = ["Gemma2ForCausalLM", "SandwichDecoderLayer", "layer_windows"]


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


def layer_windows(raw: dict[str, Any], every_nth_global: int) -> tuple[int, ...]:
    """The window of each layer: config.json's `layer_types` where it names them, else every
    `every_nth_global`-th layer global and the rest sliding (Gemma 2: 2, Gemma 3: 6)."""
    window = int(raw.get("sliding_window") or 0)
    layers = int(raw["num_hidden_layers"])
    types = raw.get("layer_types") or [
        "full_attention" if (i + 1) % every_nth_global == 0 else "sliding_attention" for i in range(layers)
    ]
    unknown = set(types) - {"full_attention", "sliding_attention"}
    if unknown or len(types) != layers:
        raise UnsupportedModel(f"{raw.get('architectures')}: layer types {sorted(unknown) or types} are not supported")
    return tuple(window if t == "sliding_attention" else 0 for t in types)


class Gemma2ForCausalLM(CausalLM):
    layer_cls = SandwichDecoderLayer

    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        return {
            **gemma_common(raw),
            "attn_scale": float(raw.get("query_pre_attn_scalar") or raw["head_dim"]) ** -0.5,
            "attn_softcap": float(raw.get("attn_logit_softcapping") or 0.0),
            "final_softcap": float(raw.get("final_logit_softcapping") or 0.0),
            "layer_windows": layer_windows(raw, 2),
        }
