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
}


def _save(tmp_path: Path, family: str) -> tuple[Path, torch.nn.Module]:
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    config = config_cls(**{**_COMMON, **extra})
    model = model_cls(config).eval()
    with torch.no_grad():  # larger weights than the init so differences would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / family
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


@pytest.mark.parametrize("family", ["llama", "qwen3"])
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


def test_mistral_sliding_window_caps_the_sequence_length(tmp_path: Path) -> None:
    config = transformers.MistralConfig(**{**_COMMON, "sliding_window": 64})
    transformers.MistralForCausalLM(config).save_pretrained(tmp_path)
    runner = ModelRunner(WorkerConfig(device="cpu", dtype="float32", max_batch_total_tokens=128), tmp_path)
    assert runner.max_model_len == 64


def test_partial_rotary_is_refused_not_served_wrong(tmp_path: Path) -> None:
    config = transformers.Phi3Config(**{**_COMMON, "pad_token_id": 0, "partial_rotary_factor": 0.5})
    config.architectures = ["Phi3ForCausalLM"]
    config.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModel, match="partial rotary"):
        read_config(tmp_path)
