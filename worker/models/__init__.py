"""Model families by HF architecture name; `read_config` picks a model directory's family."""

from __future__ import annotations

import json
from pathlib import Path

from worker.models.causal_lm import CausalLM
from worker.models.config import ModelConfig, UnsupportedModel, architecture_of
from worker.models.llama import LlamaForCausalLM
from worker.models.mistral import MistralForCausalLM
from worker.models.phi3 import Phi3ForCausalLM
from worker.models.qwen2 import Qwen2ForCausalLM
from worker.models.qwen3 import Qwen3ForCausalLM

__all__ = ["MODEL_REGISTRY", "read_config", "CausalLM", "ModelConfig", "UnsupportedModel"]

MODEL_REGISTRY: dict[str, type[CausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Phi3ForCausalLM": Phi3ForCausalLM,
}


def read_config(model_dir: Path) -> tuple[type[CausalLM], ModelConfig]:
    raw = json.loads((model_dir / "config.json").read_text())
    arch = architecture_of(raw)
    cls = MODEL_REGISTRY.get(arch)
    if cls is None:
        supported = ", ".join(sorted(MODEL_REGISTRY))
        named = repr(arch) if arch else f"(none named; model_type {raw.get('model_type')!r})"
        raise UnsupportedModel(f"architecture {named} is not supported; supported: {supported}")
    return cls, ModelConfig.from_dict(raw, **cls.family(raw))  # type: ignore[attr-defined]
