"""The architecture facts our model code needs, read once from an HF config.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ModelConfig", "UnsupportedModel", "architecture_of"]

# transformers goes by `model_type` when config.json names no `architectures` (a valid config).
_ARCHITECTURE_OF_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
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
    qk_norm: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any], **family: Any) -> ModelConfig:
        arch = architecture_of(raw)
        heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        # transformers v5 moved rope settings into `rope_parameters`; older configs use
        # `rope_theta` + `rope_scaling`.
        rope = dict(raw.get("rope_parameters") or {})
        theta = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
        scaling = raw.get("rope_scaling") or ({k: v for k, v in rope.items() if k != "rope_theta"} or None)
        if scaling and (scaling.get("rope_type") or scaling.get("type")) in (None, "default"):
            scaling = None
        partial = float(rope.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)))
        if partial != 1.0:
            raise UnsupportedModel(f"{arch or 'model'}: partial rotary ({partial}) is not supported")
        eos = raw.get("eos_token_id")
        eos_ids = frozenset(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
        return cls(
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
            **family,
        )
