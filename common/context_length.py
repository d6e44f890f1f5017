"""The model's context length and the default --max-total-tokens: one rule for gateway and worker.

The worker serves what its engine can hold exactly; the gateway validates against the same number
before anything is queued, and lowers it further to what the live workers report in their
heartbeats (WorkerInfo.max_total_tokens), so a request the gateway admits is one a worker serves.
"""

from __future__ import annotations

from pathlib import Path

from common.model_source import read_json_object

__all__ = ["DEFAULT_MAX_TOTAL_TOKENS", "WINDOWED_MODEL_TYPES", "context_length", "max_total_tokens"]

# The default --max-total-tokens is the model's context up to this; longer ones are asked for.
DEFAULT_MAX_TOTAL_TOKENS = 8192
_FALLBACK_CONTEXT = 4096  # a config.json that names no length (as transformers' own default)
# tokenizer_config.json writes "no limit" as 1e30 (transformers' VERY_LARGE_INTEGER).
_NO_LIMIT = 10**18
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
# The families whose sliding window the worker applies in attention (worker/models: their
# layers' `window`), so it does not cap their context; for the others it does.
WINDOWED_MODEL_TYPES = frozenset(
    {"gemma2", "gemma3_text", "starcoder2", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe"}
)


def context_length(model_dir: Path) -> int:
    """The longest sequence the model serves exactly, from its config and tokenizer config.

    The least of: its positions (max_position_embeddings or an older name), its sliding window
    where it uses one and the worker does not apply it (within the window, full attention is
    exact), and the tokenizer's model_max_length where it sets one.
    """
    config = read_json_object(model_dir / "config.json")
    config = {**config, **(config.get("text_config") or {})}  # a multimodal model's language model
    limits = [next((int(config[k]) for k in _POSITION_KEYS if config.get(k)), _FALLBACK_CONTEXT)]
    window = config.get("sliding_window")
    applied = config.get("model_type") in WINDOWED_MODEL_TYPES
    if window and config.get("use_sliding_window", True) and not applied:
        limits.append(int(window))
    tokenizer_max = read_json_object(model_dir / "tokenizer_config.json").get("model_max_length")
    if isinstance(tokenizer_max, (int, float)) and 0 < tokenizer_max < _NO_LIMIT:
        limits.append(int(tokenizer_max))
    return min(limits)


def max_total_tokens(context: int, configured: int | None) -> int:
    """--max-total-tokens as served: the setting (never past the context), else the context up to the cap."""
    if configured is not None:
        return min(configured, context)
    return min(context, DEFAULT_MAX_TOTAL_TOKENS)
