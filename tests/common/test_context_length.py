"""One rule for the model's context length and the default --max-total-tokens (gateway and worker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from common.context_length import DEFAULT_MAX_TOTAL_TOKENS, context_length, max_total_tokens


def _dir(tmp_path: Path, config: dict[str, Any], tokenizer_config: dict[str, Any] | None = None) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config))
    if tokenizer_config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return tmp_path


@pytest.mark.parametrize(("config", "tokenizer_config", "expected"), [
    ({"max_position_embeddings": 8192}, {"model_max_length": 1e30}, 8192),  # 1e30 = "no limit"
    ({"max_position_embeddings": 131072}, {"model_max_length": 2048}, 2048),
    ({"n_positions": 1024}, None, 1024),  # GPT-2's name
    ({"max_position_embeddings": 32768, "sliding_window": 4096}, None, 4096),  # a family not known to apply it
    ({"max_position_embeddings": 32768, "sliding_window": 4096, "use_sliding_window": False}, None, 32768),  # Qwen2
    ({"max_position_embeddings": 32768, "sliding_window": None}, None, 32768),
    # Families whose window the worker applies in attention: it caps nothing.
    ({"model_type": "gemma2", "max_position_embeddings": 8192, "sliding_window": 4096}, None, 8192),
    ({"model_type": "gemma3_text", "max_position_embeddings": 32768, "sliding_window": 512}, None, 32768),
    ({"model_type": "starcoder2", "max_position_embeddings": 16384, "sliding_window": 4096}, None, 16384),
    ({"model_type": "mistral", "max_position_embeddings": 32768, "sliding_window": 4096}, None, 32768),
    ({"model_type": "qwen2", "max_position_embeddings": 32768, "sliding_window": 4096, "use_sliding_window": True},
     None, 32768),
    # A multimodal checkpoint's language model names its own length and window.
    ({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", "max_position_embeddings": 131072,
                                              "sliding_window": 1024}}, None, 131072),
    ({}, None, 4096),
])
def test_context_length(tmp_path: Path, config: dict[str, Any], tokenizer_config: dict[str, Any] | None,
                        expected: int) -> None:
    assert context_length(_dir(tmp_path, config, tokenizer_config)) == expected


def test_the_default_max_total_tokens_is_the_context_up_to_the_cap() -> None:
    assert max_total_tokens(2048, None) == 2048
    assert max_total_tokens(131072, None) == DEFAULT_MAX_TOTAL_TOKENS
    assert max_total_tokens(131072, 32768) == 32768  # asked for
    assert max_total_tokens(4096, 32768) == 4096  # never past what the model serves
