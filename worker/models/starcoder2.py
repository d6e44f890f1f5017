"""Starcoder2ForCausalLM: LayerNorm with biases, biases on every linear, a plain (ungated) GELU MLP
(`c_fc`, `c_proj`), a sliding window on every layer where the config sets one, tied head."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worker.models.causal_lm import CausalLM
from worker.models.config import ModelConfig, UnsupportedModel
from worker.models.layers import linear
from worker.models.windows import uniform_windows

__all__ = ["Starcoder2ForCausalLM"]


class PlainMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool) -> None:
        super().__init__()
        self.c_fc = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.c_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(F.gelu(linear(x, self.c_fc), approximate="tanh"), self.c_proj)  # (T, hidden)


class Starcoder2ForCausalLM(CausalLM):
    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        act = str(raw.get("hidden_act", "gelu_pytorch_tanh"))
        if act not in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
            raise UnsupportedModel(f"Starcoder2ForCausalLM: activation {act!r} is not supported")
        bias = bool(raw.get("use_bias", True))
        return {
            "qkv_bias": bias,
            "o_bias": bias,
            "layer_norm": True,
            "rms_norm_eps": float(raw.get("norm_epsilon", 1e-5)),
            "tie_word_embeddings": bool(raw.get("tie_word_embeddings", True)),
            "layer_windows": uniform_windows(raw),
            "hidden_act": "gelu_tanh",
        }

    def build_mlp(self, cfg: ModelConfig, layer_idx: int) -> nn.Module:
        return PlainMLP(cfg.hidden_size, cfg.intermediate_size, cfg.qkv_bias)
