"""Model families by HF architecture name; `read_config` picks a model directory's family.

A family is a CausalLM subclass in its own file, registered below, that says how it differs from
Llama's decoder and nothing else:
- `family(raw)`: the ModelConfig fields its config.json sets (windows, soft-caps, multipliers,
  norm and MLP variants, a MoEConfig); `text_config(raw)` where a multimodal config nests them.
- `layer_cls` (pre-norm DecoderLayer; Gemma's sandwich, OLMo 2's post-norm, Cohere's parallel
  block) and `build_mlp` (gated by default; StarCoder2's plain MLP; moe.py's SparseMoE).
- `stacked_params` / `hf_to_param`, `expert_slot` and `ignores`: where each checkpoint tensor goes.
An architecture not registered here is refused at start by name; a family refuses the variants it
does not serve (UnsupportedModel) from `family`.
"""

from __future__ import annotations

import json
from pathlib import Path

from worker.models.causal_lm import CausalLM
from worker.models.cohere import CohereForCausalLM
from worker.models.config import ModelConfig, UnsupportedModel, architecture_of
from worker.models.gemma import GemmaForCausalLM
from worker.models.gemma2 import Gemma2ForCausalLM
from worker.models.gemma3 import Gemma3ForCausalLM, Gemma3ForConditionalGeneration
from worker.models.granite import GraniteForCausalLM
from worker.models.llama import LlamaForCausalLM
from worker.models.mistral import MistralForCausalLM
from worker.models.mixtral import MixtralForCausalLM
from worker.models.olmo2 import Olmo2ForCausalLM
from worker.models.phi3 import Phi3ForCausalLM
from worker.models.qwen2 import Qwen2ForCausalLM
from worker.models.qwen3 import Qwen3ForCausalLM
from worker.models.qwen_moe import Qwen2MoeForCausalLM, Qwen3MoeForCausalLM
from worker.models.starcoder2 import Starcoder2ForCausalLM

__all__ = ["MODEL_REGISTRY", "read_config", "CausalLM", "ModelConfig", "UnsupportedModel"]

MODEL_REGISTRY: dict[str, type[CausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Phi3ForCausalLM": Phi3ForCausalLM,
    "GemmaForCausalLM": GemmaForCausalLM,
    "Gemma2ForCausalLM": Gemma2ForCausalLM,
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
    "Gemma3ForConditionalGeneration": Gemma3ForConditionalGeneration,
    "GraniteForCausalLM": GraniteForCausalLM,
    "Olmo2ForCausalLM": Olmo2ForCausalLM,
    "Starcoder2ForCausalLM": Starcoder2ForCausalLM,
    "MixtralForCausalLM": MixtralForCausalLM,
    "Qwen2MoeForCausalLM": Qwen2MoeForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
    "CohereForCausalLM": CohereForCausalLM,
}


def read_config(model_dir: Path) -> tuple[type[CausalLM], ModelConfig]:
    raw = json.loads((model_dir / "config.json").read_text())
    arch = architecture_of(raw)
    cls = MODEL_REGISTRY.get(arch)
    if cls is None:
        supported = ", ".join(sorted(MODEL_REGISTRY))
        named = repr(arch) if arch else f"(none named; model_type {raw.get('model_type')!r})"
        raise UnsupportedModel(f"architecture {named} is not supported; supported: {supported}")
    raw = cls.text_config(raw)
    return cls, ModelConfig.from_dict(raw, **cls.family(raw))  # type: ignore[attr-defined]
