"""Building blocks shared by the decoder-only families: norms, attention with fused qkv, gated MLP,
and the pre-norm decoder layer (Llama's) that most families use as it is."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worker import ops
from worker.attention import Rotary, attend
from worker.models.config import ModelConfig

__all__ = ["RMSNorm", "LayerNorm", "make_norm", "linear", "SelfAttention", "GatedMLP", "DecoderLayer"]


def linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    # A quantized linear (worker/quant) is its own module; a dense one goes through ops.linear,
    # where one-row decoder layers run inside the decode CUDA graphs: chosen by GPU time alone.
    if type(layer) is not nn.Linear:
        return layer(x)  # type: ignore[no-any-return]
    return ops.linear(x, layer.weight, layer.bias, graphed=True)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.offset = offset  # Gemma: the checkpoint stores w - 1

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
        return ops.rms_norm(x, self.weight, self.eps, residual, self.offset)


class LayerNorm(nn.Module):
    """LayerNorm, with a bias (StarCoder2) or without (Cohere), and RMSNorm's fused-residual interface."""

    def __init__(self, size: int, eps: float, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
        if residual is not None:
            x = x + residual
        out = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return out if residual is None else (out, x)


def make_norm(cfg: ModelConfig, size: int) -> nn.Module:
    if cfg.layer_norm:
        return LayerNorm(size, cfg.rms_norm_eps, cfg.layer_norm_bias)
    return RMSNorm(size, cfg.rms_norm_eps, cfg.norm_offset)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else cfg.head_dim**-0.5
        self.softcap = cfg.attn_softcap
        self.window = cfg.layer_windows[layer_idx] if cfg.layer_windows else 0
        # Which rope table of CausalLM.cos_sin_cache: 1 = the sliding-window layers' own (Gemma 3).
        self.rope_table = 1 if self.window and cfg.local_rope is not None else 0
        self.rope_neox = not cfg.rope_interleaved
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=cfg.o_bias)
        # q and k normalised before rotary: per head (Qwen3, Gemma 3) or over the projection (OLMo 2).
        self.qk_norm = cfg.qk_norm
        q_width, k_width = (cfg.head_dim, cfg.head_dim) if cfg.qk_norm == "head" else (self.q_size, self.kv_size)
        self.q_norm = make_norm(cfg, q_width) if cfg.qk_norm else None
        self.k_norm = make_norm(cfg, k_width) if cfg.qk_norm else None

    def forward(self, positions: torch.Tensor, x: torch.Tensor, rope_tables: torch.Tensor) -> torch.Tensor:
        num_tokens = x.shape[0]
        qkv = linear(x, self.qkv_proj)  # (T, q + 2kv)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm == "all" and self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q.contiguous()), self.k_norm(k.contiguous())  # (T, q), (T, kv)
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)  # (T, H, D)
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)  # (T, n_kv, D)
        v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)  # (T, n_kv, D)
        if self.qk_norm == "head" and self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q.reshape(-1, self.head_dim)).reshape(q.shape)
            k = self.k_norm(k.reshape(-1, self.head_dim)).reshape(k.shape)
        rotary = Rotary(positions, rope_tables[self.rope_table], self.rope_neox)  # applied with the KV store
        out = attend(self.layer_idx, q, k, v, self.scale, self.window, self.softcap, rotary)  # (T, H, D)
        return linear(out.reshape(num_tokens, self.q_size), self.o_proj)  # (T, hidden)


class GatedMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu") -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_and_mul = ops.gelu_tanh_and_mul if hidden_act == "gelu_tanh" else ops.silu_and_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.act_and_mul(linear(x, self.gate_up_proj)), self.down_proj)  # (T, hidden)


class DecoderLayer(nn.Module):
    """Pre-norm: x + attn(norm(x)), then + mlp(norm(.)); Granite scales both branches."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, mlp: nn.Module) -> None:
        super().__init__()
        self.input_layernorm = make_norm(cfg, cfg.hidden_size)
        self.self_attn = SelfAttention(cfg, layer_idx)
        self.post_attention_layernorm = make_norm(cfg, cfg.hidden_size)
        self.mlp = mlp
        self.residual_scale = cfg.residual_scale

    def normed_input(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual stream is carried separately so each norm can fuse the add.
        if residual is None:
            return self.input_layernorm(hidden), hidden
        return self.input_layernorm(hidden, residual)  # type: ignore[no-any-return]

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        rope_tables: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = self.normed_input(hidden, residual)
        hidden = self.self_attn(positions, hidden, rope_tables)
        if self.residual_scale != 1.0:
            hidden = hidden * self.residual_scale
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        hidden = self.mlp(hidden)
        if self.residual_scale != 1.0:
            hidden = hidden * self.residual_scale
        return hidden, residual
