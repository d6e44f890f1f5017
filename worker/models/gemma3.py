"""Gemma3ForCausalLM (Gemma 3 text): Gemma 2's layers with per-head q/k norms, five sliding-window
layers to each global one, and a rope base of their own for the sliding-window layers."""

from __future__ import annotations

from typing import Any

from worker.models.causal_lm import CausalLM
from worker.models.config import UnsupportedModel, rope_of
from worker.models.gemma import gemma_common
from worker.models.gemma2 import SandwichDecoderLayer
from worker.models.windows import typed_windows

__all__ = ["Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"]

# Where a multimodal checkpoint keeps its language model (older saves, then transformers v5's).
_TEXT_PREFIXES = ("language_model.", "model.language_model.")
_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


class Gemma3ForCausalLM(CausalLM):
    layer_cls = SandwichDecoderLayer

    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        if raw.get("use_bidirectional_attention"):
            raise UnsupportedModel("Gemma3ForCausalLM: bidirectional attention (an embedding model) is not served")
        rope = raw.get("rope_parameters") or {}
        if "full_attention" in rope:  # transformers v5: one rope description per layer type
            global_rope = rope_of({}, rope["full_attention"])
            local_rope = rope_of({}, rope.get("sliding_attention") or {})
        else:  # rope_theta / rope_scaling for global layers, rope_local_base_freq for the others
            global_rope = rope_of(raw, rope)
            local_rope = (float(raw.get("rope_local_base_freq", 10000.0)), None)
        every_nth_global = int(raw.get("sliding_window_pattern") or 6)
        return {
            **gemma_common(raw),
            "qk_norm": "head",
            "rope_theta": global_rope[0],
            "rope_scaling": global_rope[1],
            "local_rope": local_rope,
            "attn_scale": float(raw.get("query_pre_attn_scalar") or raw["head_dim"]) ** -0.5,
            "attn_softcap": float(raw.get("attn_logit_softcapping") or 0.0),
            "final_softcap": float(raw.get("final_logit_softcapping") or 0.0),
            "layer_windows": typed_windows(raw, lambda i: (i + 1) % every_nth_global != 0),
        }


class Gemma3ForConditionalGeneration(Gemma3ForCausalLM):
    """Gemma 3 4B / 12B / 27B checkpoints served as text models: the language model of
    `text_config`, the vision tower and projector left unread (prompts with images are not served)."""

    @staticmethod
    def text_config(raw: dict[str, Any]) -> dict[str, Any]:
        text = dict(raw.get("text_config") or {})
        if not text:
            raise UnsupportedModel("Gemma3ForConditionalGeneration: config.json has no text_config")
        # The checkpoint's own name and end-of-turn ids stand beside text_config.
        eos = raw.get("eos_token_id", text.get("eos_token_id"))
        tied = raw.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
        return {**text, "architectures": raw.get("architectures"), "eos_token_id": eos, "tie_word_embeddings": tied}

    @staticmethod
    def family(raw: dict[str, Any]) -> dict[str, Any]:
        # transformers' multimodal class leaves the logits uncapped, whatever text_config says.
        return {**Gemma3ForCausalLM.family(raw), "final_softcap": 0.0}

    def ignores(self, hf_name: str) -> bool:
        return hf_name.startswith(_VISION_PREFIXES)

    def hf_to_param(self, hf_name: str) -> tuple[str, int | None]:
        for prefix in _TEXT_PREFIXES:
            if hf_name.startswith(prefix):
                hf_name = hf_name[len(prefix) :]
                break
        return super().hf_to_param(hf_name)
