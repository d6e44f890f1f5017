"""safetensors -> our modules: HF names mapped onto fused qkv_proj / gate_up_proj, mmap'd shards."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from worker.models import CausalLM

__all__ = ["load_weights"]


def load_weights(model: CausalLM, model_dir: Path, dtype: torch.dtype, device: torch.device) -> None:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    params = dict(model.named_parameters())
    cfg = model.cfg
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shard_offsets = {
        "qkv_proj": [(0, q), (q, kv), (q + kv, kv)],
        "gate_up_proj": [(0, cfg.intermediate_size), (cfg.intermediate_size, cfg.intermediate_size)],
    }
    loaded: set[str] = set()
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for hf_name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                if "rotary_emb.inv_freq" in hf_name:
                    continue
                if hf_name == "lm_head.weight" and model.lm_head is None:
                    continue  # tied: the embedding serves as the head
                name, shard = model.hf_to_param(hf_name)
                param = params.get(name)
                if param is None:
                    raise KeyError(f"checkpoint tensor {hf_name!r} has no place in {type(model).__name__}")
                tensor = f.get_tensor(hf_name)
                with torch.no_grad():
                    if shard is None:
                        param.copy_(tensor)
                    else:
                        fused = name.split(".")[-2]
                        start, size = shard_offsets[fused][shard]
                        param[start : start + size].copy_(tensor)
                loaded.add(name)
    missing = set(params) - loaded
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
    model.to(device=device, dtype=dtype)
    model.cos_sin_cache.data = model.cos_sin_cache.float()  # rotary tables stay float32
