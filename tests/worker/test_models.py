"""Each model family against transformers: tiny random configs, logits and greedy tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from common.config import WorkerConfig
from common.sampling_params import SamplingParams
from worker.attention import AttentionMetadata, forward_context
from worker.batch import ScheduledBatch, ScheduledRequest
from worker.input_builder import build_inputs
from worker.model_runner import ModelRunner
from worker.models import UnsupportedModel, read_config

_COMMON = dict(
    vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
)

FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "llama31": (
        transformers.LlamaConfig, transformers.LlamaForCausalLM,
        {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
    ),
    "llama_tied": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {"tie_word_embeddings": True}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 16}),
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, {"pad_token_id": 0}),
    # Prompt and decode stay inside the original context of 64: the short factors, as transformers.
    "phi35_longrope": (
        transformers.Phi3Config, transformers.Phi3ForCausalLM,
        {"pad_token_id": 0, "original_max_position_embeddings": 64,
         "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
                          "long_factor": [2.0 + 0.5 * i for i in range(8)]}},
    ),
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM, {"head_dim": 16}),
    # Windows of 8 tokens: the prompt (13) and its 32 decode steps cross them.
    "gemma2": (
        transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
        {"head_dim": 16, "sliding_window": 8, "attn_logit_softcapping": 2.0, "final_logit_softcapping": 5.0},
    ),
    "gemma3": (
        transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM,
        {"head_dim": 16, "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"],
         "rope_scaling": {"rope_type": "linear", "factor": 4.0}, "final_logit_softcapping": 5.0},
    ),
    "granite": (
        transformers.GraniteConfig, transformers.GraniteForCausalLM,
        {"embedding_multiplier": 3.0, "residual_multiplier": 0.5, "attention_multiplier": 0.3, "logits_scaling": 4.0},
    ),
    "olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM, {"pad_token_id": 0}),
    "starcoder2": (transformers.Starcoder2Config, transformers.Starcoder2ForCausalLM,
                   {"sliding_window": 8, "norm_epsilon": 1e-5, "bos_token_id": 1, "eos_token_id": 2}),
    "cohere": (transformers.CohereConfig, transformers.CohereForCausalLM, {"logit_scale": 0.5, "pad_token_id": 0}),
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM,
                {"num_local_experts": 4, "num_experts_per_tok": 2}),
    # A dense layer beside the MoE one (mlp_only_layers), a shared expert, unnormalized top-k.
    "qwen2_moe": (
        transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM,
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
         "shared_expert_intermediate_size": 48, "mlp_only_layers": [1], "norm_topk_prob": False},
    ),
    "qwen3_moe": (
        transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM,
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16,
         "norm_topk_prob": True},
    ),
}


def _save(tmp_path: Path, family: str, overrides: dict | None = None, name: str | None = None  # type: ignore[type-arg]
          ) -> tuple[Path, torch.nn.Module]:
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    config = config_cls(**{**_COMMON, **extra, **(overrides or {})})
    model = model_cls(config).eval()
    with torch.no_grad():  # larger weights than the init so differences would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / (name or family)
    model.save_pretrained(path)
    return path, model


def _our_logits(runner: ModelRunner, token_ids: list[int], start: int, blocks: list[int]) -> torch.Tensor:
    req = ScheduledRequest("x", token_ids, start, blocks, True, SamplingParams(max_new_tokens=1))
    batch = ScheduledBatch(0, [req], 0, len(token_ids))
    inputs = build_inputs(batch, runner.block_size, runner.device)
    meta = AttentionMetadata(inputs.slot_mapping, inputs.block_tables, inputs.seq_lens,
                             inputs.query_start_loc, runner.kv.layers, inputs.max_query_len)
    with torch.inference_mode(), forward_context(meta):
        hidden = runner.model(inputs.input_ids, inputs.positions)
    return runner.model.compute_logits(hidden)  # (T, V)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_and_greedy_tokens_match_transformers(tmp_path: Path, family: str) -> None:
    path, reference = _save(tmp_path, family)
    runner = ModelRunner(WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=512, block_size=8), path)
    blocks = list(range(runner.num_blocks))
    prompt = [int(t) for t in torch.randint(1, 200, (13,), generator=torch.Generator().manual_seed(1))]
    ours = _our_logits(runner, prompt, 0, blocks)
    with torch.no_grad():
        theirs = reference(torch.tensor([prompt])).logits[0].float()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # 32 greedy decode steps through the paged cache.
    tokens = list(prompt)
    for _ in range(32):
        nxt = int(ours[-1].argmax())
        tokens.append(nxt)
        ours = _our_logits(runner, [nxt], len(tokens) - 1, blocks)
    with torch.no_grad():
        final = reference(torch.tensor([tokens])).logits[0, -1].float()
        generated = reference.generate(
            torch.tensor([prompt]), max_new_tokens=32, do_sample=False, attention_mask=torch.ones(1, len(prompt), dtype=torch.long)
        )[0, len(prompt):].tolist()
    torch.testing.assert_close(ours[-1], final, rtol=1e-4, atol=1e-4)
    assert tokens[len(prompt):] == generated


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UnsupportedModel, match="GPT2LMHeadModel"):
        read_config(tmp_path)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "starcoder2", "mixtral", "qwen2_moe", "cohere"])
def test_a_config_without_architectures_goes_by_model_type(tmp_path: Path, family: str) -> None:
    config_cls, model_cls, extra = FAMILIES[family]
    config = config_cls(**{**_COMMON, **extra})
    config.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.pop("architectures", None)  # valid for transformers, which goes by model_type
    (tmp_path / "config.json").write_text(json.dumps(raw))
    cls, cfg = read_config(tmp_path)
    assert cls.__name__ == model_cls.__name__ and cfg.architecture == model_cls.__name__


def test_a_config_with_neither_names_its_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedModel, match="model_type 'gpt2'"):
        read_config(tmp_path)


# Windows of 8 as transformers reads them per family: every layer (Mistral, Mixtral, Qwen3-MoE),
# from max_window_layers on (Qwen2, Qwen3), even layers below it (Qwen2-MoE); the KV window is
# the one every layer shares, else 0.
WINDOWED = {
    "mistral": ({"sliding_window": 8}, (8, 8), 8),
    "mixtral": ({"sliding_window": 8}, (8, 8), 8),
    "qwen2": ({"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}, (0, 8), 0),
    "qwen3": ({"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0}, (8, 8), 8),
    "qwen2_moe": ({"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2}, (8, 0), 0),
    "qwen3_moe": ({"use_sliding_window": True, "sliding_window": 8}, (8, 8), 8),
}


@pytest.mark.parametrize("family", sorted(WINDOWED))
def test_sliding_windows_are_applied_as_transformers_reads_them(tmp_path: Path, family: str) -> None:
    # A 40-token prompt in chunks of 7, then 8 decode steps: the window is applied in attention
    # (the context is not capped) and matches transformers layer by layer.
    overrides, windows, kv_window = WINDOWED[family]
    path, reference = _save(tmp_path, family, overrides)
    runner = ModelRunner(WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=512, block_size=4), path)
    assert runner.model.cfg.layer_windows == windows and runner.model.cfg.kv_window == kv_window
    assert runner.max_model_len == _COMMON["max_position_embeddings"]
    blocks = list(range(runner.num_blocks))
    tokens = [int(t) for t in torch.randint(1, 200, (40,), generator=torch.Generator().manual_seed(2))]
    ours = [_our_logits(runner, tokens[i : i + 7], i, blocks) for i in range(0, len(tokens), 7)]
    for _ in range(8):
        tokens.append(int(ours[-1][-1].argmax()))
        ours.append(_our_logits(runner, tokens[-1:], len(tokens) - 1, blocks))
    with torch.no_grad():
        theirs = reference(torch.tensor([tokens])).logits[0].float()
    torch.testing.assert_close(torch.cat(ours), theirs, rtol=1e-4, atol=1e-4)


def test_a_window_the_config_turns_off_is_no_window(tmp_path: Path) -> None:
    path, _ = _save(tmp_path, "qwen2", {"use_sliding_window": False, "sliding_window": 8, "max_window_layers": 0})
    _, cfg = read_config(path)
    assert cfg.layer_windows == () and cfg.kv_window == 0


def test_partial_rotary_is_refused_not_served_wrong(tmp_path: Path) -> None:
    config = transformers.Phi3Config(**{**_COMMON, "pad_token_id": 0, "partial_rotary_factor": 0.5})
    config.architectures = ["Phi3ForCausalLM"]
    config.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModel, match="partial rotary"):
        read_config(tmp_path)


@pytest.mark.parametrize("family", ["gemma2", "starcoder2", "mixtral"])
def test_chunked_prefill_across_the_window_matches_transformers(tmp_path: Path, family: str) -> None:
    # A 40-token prompt in chunks of 7 over the paged cache: the chunks after the first read
    # keys cached by earlier steps, and (windowed families) only those inside the window.
    path, reference = _save(tmp_path, family)
    runner = ModelRunner(WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=512, block_size=4), path)
    blocks = list(range(runner.num_blocks))
    prompt = [int(t) for t in torch.randint(1, 200, (40,), generator=torch.Generator().manual_seed(2))]
    ours = torch.cat([_our_logits(runner, prompt[i : i + 7], i, blocks) for i in range(0, len(prompt), 7)])
    with torch.no_grad():
        theirs = reference(torch.tensor([prompt])).logits[0].float()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "starcoder2"])
def test_a_window_applied_in_attention_does_not_cap_the_context(tmp_path: Path, family: str) -> None:
    path, _ = _save(tmp_path, family)
    runner = ModelRunner(WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=128), path)
    assert runner.max_model_len == _COMMON["max_position_embeddings"]
    assert any(layer.self_attn.window == 8 for layer in runner.model.layers)


def test_gemma3_reads_an_older_configs_rope_and_window_pattern(tmp_path: Path) -> None:
    # Checkpoints written before transformers v5: rope_theta + rope_scaling for the global layers,
    # rope_local_base_freq for the sliding ones, and a pattern instead of layer_types.
    raw = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", **_COMMON, "head_dim": 16,
           "num_hidden_layers": 6, "sliding_window": 512, "sliding_window_pattern": 3, "rope_theta": 1e6,
           "rope_local_base_freq": 1e4, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
           "query_pre_attn_scalar": 16}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    _, cfg = read_config(tmp_path)
    assert cfg.layer_windows == (512, 512, 0, 512, 512, 0)
    assert (cfg.rope_theta, cfg.rope_scaling) == (1e6, {"rope_type": "linear", "factor": 8.0})
    assert cfg.local_rope == (1e4, None) and cfg.attn_scale == 0.25 and cfg.norm_offset == 1.0


def test_a_gemma3_multimodal_checkpoint_serves_its_language_model(tmp_path: Path) -> None:
    # Gemma 3 4B and up ship as Gemma3ForConditionalGeneration: text prompts get what
    # transformers' multimodal class gives them, and the vision tower is left unread.
    _, _, extra = FAMILIES["gemma3"]
    text = {**_COMMON, **extra, "vocab_size": 300}
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                       image_token_index=299, boi_token_index=297, eoi_token_index=298)
    torch.manual_seed(0)
    reference = transformers.Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    reference.save_pretrained(tmp_path)
    runner = ModelRunner(WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=128, block_size=8), tmp_path)
    assert runner.max_model_len == _COMMON["max_position_embeddings"]  # from text_config; its window caps nothing
    prompt = [int(t) for t in torch.randint(1, 290, (20,), generator=torch.Generator().manual_seed(3))]
    ours = _our_logits(runner, prompt, 0, list(range(runner.num_blocks)))
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor([prompt])).logits[0].float()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("family", "extra", "named"), [
    ("cohere", {"use_qk_norm": True}, "use_qk_norm"),
    ("granite", {"mlp_bias": True}, "mlp_bias"),
    ("gemma3", {"use_bidirectional_attention": True}, "bidirectional"),
    ("mixtral", {"hidden_act": "gelu"}, "'gelu'"),
])
def test_a_variant_a_family_does_not_serve_is_refused_by_name(tmp_path: Path, family: str, extra: dict, named: str  # type: ignore[type-arg]
                                                               ) -> None:
    config_cls, model_cls, base = FAMILIES[family]
    config = config_cls(**{**_COMMON, **base})
    config.architectures = [model_cls.__name__]
    config.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, **extra}))
    with pytest.raises(UnsupportedModel, match=named):
        read_config(tmp_path)
