"""The config.json bodies of the benchmark shapes, and the model directories written from them.

The weights of these models are random (nothing is downloaded); a directory can borrow a real
tokenizer, whose BOS/EOS ids then replace the shape's own, so that everything that checks token
ids against the vocabulary (the grammar compiler, stop handling) sees ids the tokenizer has.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["SHAPES", "ALIASES", "write_model_dir"]

# HF config.json bodies of the two benchmark shapes (weights are random; nothing is downloaded).
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    },
    "smollm2-135m": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    },
    # Mixtral-8x7B's shape (46.7B parameters, 93 GB in bf16): 8 experts of FFN 14336, top-2.
    "mixtral-8x7b": {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 32000, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": None,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
    },
}
ALIASES = {"8b": "llama-3.1-8b", "smollm2": "smollm2-135m", "mixtral": "mixtral-8x7b"}


def write_model_dir(root: Path, shape: str, tokenizer_dir: Path | None = None) -> Path:
    """root/shape holding the shape's config.json, and tokenizer_dir's tokenizer files if given."""
    config = dict(SHAPES[shape])
    path = root / shape
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        for item in tokenizer_dir.iterdir():
            if item.name.startswith("tokenizer") or item.suffix == ".jinja":
                shutil.copy(item, path / item.name)
        own = tokenizer_dir / "config.json"
        if own.is_file():
            ids = json.loads(own.read_text())
            config.update({k: ids[k] for k in ("bos_token_id", "eos_token_id") if k in ids})
    (path / "config.json").write_text(json.dumps(config))
    return path
