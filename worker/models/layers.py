"""Building blocks shared by the decoder-only families: norm, attention with fused qkv, gated MLP."""

from __future__ import annotations

import torch
from torch import nn

from worker import ops
from worker.attention import attend
from worker.models.config import ModelConfig

__all__ = ["RMSNorm", "SelfAttention", "GatedMLP", "DecoderLayer"]


def _linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    # A quantized linear (worker/quant) is its own module; a dense one goes through ops.linear,
    # where one-row decoder layers run inside the decode CUDA graphs: chosen by GPU time alone.
    if type(layer) is not nn.Linear:
        return layer(x)  # type: ignore[no-any-return]
    return ops.linear(x, layer.weight, layer.bias, graphed=True)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
        return ops.rms_norm(x, self.weight, self.eps, residual)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=cfg.o_bias)
        # Qwen3 normalises each head's q and k before rotary.
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None

    def forward(self, positions: torch.Tensor, x: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
        num_tokens = x.shape[0]
        qkv = _linear(x, self.qkv_proj)  # (T, q + 2kv)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)  # (T, H, D)
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)  # (T, n_kv, D)
        v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)  # (T, n_kv, D)
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q.reshape(-1, self.head_dim)).reshape(q.shape)
            k = self.k_norm(k.reshape(-1, self.head_dim)).reshape(k.shape)
        q, k = ops.rotary_embedding(positions, q, k, cos_sin)
        out = attend(self.layer_idx, q, k, v, self.scale)  # (T, H, D)
        return _linear(out.reshape(num_tokens, self.q_size), self.o_proj)  # (T, hidden)


class GatedMLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(ops.silu_and_mul(_linear(x, self.gate_up_proj)), self.down_proj)  # (T, hidden)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = SelfAttention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        cos_sin: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual stream is carried separately so each norm can fuse the add.
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, cos_sin)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual
