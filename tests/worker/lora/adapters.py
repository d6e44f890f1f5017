"""Random PEFT LoRA adapters made with peft itself, so the loader meets the real checkpoint format."""

from __future__ import annotations

from pathlib import Path

import torch

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEARS = (*ATTENTION, "gate_proj", "up_proj", "down_proj")


def make_adapter(base: torch.nn.Module, out_dir: Path, seed: int, *, r: int = 8, alpha: int = 16,
                 targets: tuple[str, ...] = ALL_LINEARS, rslora: bool = False, scale: float = 0.05) -> torch.nn.Module:
    """Save a random adapter of `base` (a transformers model, left unchanged) to `out_dir`; returns
    transformers + peft's merged model, the reference its tokens are compared with."""
    import copy

    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), use_rslora=rslora, lora_dropout=0.0,
                        init_lora_weights=False)
    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():  # B is zero at init: make it random, small enough to keep the text coherent
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * scale)
    peft_model.save_pretrained(out_dir)
    return peft_model.merge_and_unload().eval()
