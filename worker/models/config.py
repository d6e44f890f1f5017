"""The architecture facts our model code needs, read once from an HF config.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ModelConfig", "MoEConfig", "UnsupportedModel", "architecture_of", "rope_of"]

# transformers goes by `model_type` when config.json names no `architectures` (a valid config).
_ARCHITECTURE_OF_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma3": "Gemma3ForConditionalGeneration",
    "granite": "GraniteForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "starcoder2": "Starcoder2ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "cohere": "CohereForCausalLM",
}


def architecture_of(raw: dict[str, Any]) -> str:
    """The HF architecture name: `architectures[0]`, else the one `model_type` stands for ("" if none)."""
    archs = raw.get("architectures") or []
    if archs:
        return str(archs[0])
    return _ARCHITECTURE_OF_MODEL_TYPE.get(str(raw.get("model_type", "")), "")


class UnsupportedModel(ValueError):
    pass


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int
    top_k: int  # experts per token
    intermediate_size: int  # of each expert
    normalize_top_k: bool  # routing weights of the chosen experts renormalized to sum to 1
    shared_intermediate_size: int = 0  # > 0: a shared expert (sigmoid-gated) beside the routed ones
    sparse_layers: tuple[bool, ...] = ()  # per layer: experts (True) or a dense MLP; empty: all experts


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    eos_token_ids: frozenset[int]
    qkv_bias: bool = False
    o_bias: bool = False
    # Per-head RMSNorm of q and k before rotary (Qwen3, Gemma 3): "head"; over the whole
    # projection (OLMo 2): "all"; none: "".
    qk_norm: str = ""
    hidden_act: str = "silu"  # the gated MLP's: "silu" or "gelu_tanh"
    layer_norm: bool = False  # LayerNorm instead of RMSNorm (StarCoder2, Cohere)
    layer_norm_bias: bool = True  # the LayerNorm has a bias (StarCoder2; not Cohere)
    rope_interleaved: bool = False  # rotary pairs (2i, 2i + 1) (GPT-J, Cohere), not (i, i + D/2)
    norm_offset: float = 0.0  # added to every RMSNorm weight (Gemma stores w - 1)
    attn_scale: float | None = None  # the q.k scale; None: head_dim ** -0.5
    attn_softcap: float = 0.0  # > 0: attention scores soft-capped (Gemma 2)
    final_softcap: float = 0.0  # > 0: logits soft-capped (Gemma 2)
    embedding_scale: float = 1.0  # embeddings times this, rounded to the model's dtype (Gemma, Granite)
    residual_scale: float = 1.0  # each block's output times this before the residual add (Granite)
    logits_scale: float = 1.0  # logits times this (Granite: 1 / logits_scaling)
    # Sliding window per layer (0: full attention); empty: every layer full (worker/models/windows.py).
    layer_windows: tuple[int, ...] = ()
    # Rope (theta, scaling) of the sliding-window layers where it differs from the global one (Gemma 3).
    local_rope: tuple[float, dict[str, Any] | None] | None = None
    moe: MoEConfig | None = None

    @property
    def kv_window(self) -> int:
        """The window past which a request's KV pages can be given back: the widest window when
        every layer slides, else 0. All layers share one block table, so a single full-attention
        layer (Gemma 2 and 3) reads every page and none may go."""
        if not self.layer_windows or not all(self.layer_windows):
            return 0
        return max(self.layer_windows)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], **family: Any) -> ModelConfig:
        arch = architecture_of(raw)
        heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        rope = dict(raw.get("rope_parameters") or {})
        theta, scaling = rope_of(raw, rope)
        partial = float(rope.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)))
        if partial != 1.0:
            raise UnsupportedModel(f"{arch or 'model'}: partial rotary ({partial}) is not supported")
        eos = raw.get("eos_token_id")
        eos_ids = frozenset(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
        fields: dict[str, Any] = dict(
            architecture=arch,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            eos_token_ids=eos_ids,
        )
        return cls(**{**fields, **family})


def rope_of(raw: dict[str, Any], rope: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling or None) from one rope description: transformers v5's `rope_parameters`
    (given as `rope`), else an older config's `rope_theta` + `rope_scaling`."""
    theta = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
    scaling = raw.get("rope_scaling") or ({k: v for k, v in rope.items() if k != "rope_theta"} or None)
    if scaling and (scaling.get("rope_type") or scaling.get("type")) in (None, "default"):
        scaling = None
    return theta, scaling

