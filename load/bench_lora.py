"""Random PEFT adapters of a benchmark shape, for load/bench_gpu.py's `--lora` rows.

bench_gpu.py loads N of them (rank r, every decoder linear) into the runner and runs (b) 64 x
(128 in / 256 out) twice more: every row on one of the N adapters in turn (their steps run
eagerly: the decode graphs hold no adapters), and every row on the base with the adapters loaded
(what serving them costs requests that use none: the graphs still replay). Each row is reported
against (b) without adapters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_adapters"]


def write_adapters(root: Path, cfg: dict[str, Any], count: int, rank: int) -> list[tuple[str, Path]]:
    """`count` random adapters of the shape `cfg` (config.json's fields): (id, directory) each."""
    import torch
    from safetensors.torch import save_file

    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    shapes = {"self_attn.q_proj": (hidden, q), "self_attn.k_proj": (hidden, kv), "self_attn.v_proj": (hidden, kv),
              "self_attn.o_proj": (q, hidden), "mlp.gate_proj": (hidden, inter), "mlp.up_proj": (hidden, inter),
              "mlp.down_proj": (inter, hidden)}
    made = []
    for n in range(count):
        gen = torch.Generator().manual_seed(n)
        tensors = {}
        for layer in range(cfg["num_hidden_layers"]):
            for module, (fan_in, fan_out) in shapes.items():
                name = f"base_model.model.model.layers.{layer}.{module}"
                tensors[f"{name}.lora_A.weight"] = torch.randn(rank, fan_in, generator=gen, dtype=torch.bfloat16) * 0.01
                tensors[f"{name}.lora_B.weight"] = torch.randn(fan_out, rank, generator=gen, dtype=torch.bfloat16) * 0.01
        directory = root / f"lora-{n}"
        directory.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(directory / "adapter_model.safetensors"))
        targets = sorted({m.rsplit(".", 1)[1] for m in shapes})
        (directory / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": targets, "bias": "none"}))
        made.append((f"lora-{n}", directory))
    return made
