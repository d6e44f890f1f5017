"""Rotary position embedding tables: the [cos | sin] of every position, with the checkpoint's scaling.

Model maths, computed once per model at load (a buffer of CausalLM); the rotary kernels and their
reference (genfleet_kernels/rotary_embedding.py, genfleet_kernels/reference.py) only read the table.
"""

from __future__ import annotations

import math

import torch

__all__ = ["build_cos_sin_cache"]


def build_cos_sin_cache(
    head_dim: int, max_position: int, base: float, scaling: dict | None = None  # type: ignore[type-arg]
) -> torch.Tensor:  # (max_position, head_dim): [cos | sin] halves, float32
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])  # type: ignore[index]
    elif kind == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, scaling)  # type: ignore[arg-type]
    elif kind == "longrope":
        return _longrope_table(head_dim, max_position, base, scaling)  # type: ignore[arg-type]
    elif kind not in ("default",):
        raise ValueError(f"rope scaling type {kind!r} is not supported")
    t = torch.arange(max_position, dtype=torch.float64)
    freqs = torch.outer(t, inv_freq)  # (max_position, D/2)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).float()


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:  # type: ignore[type-arg]
    # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, a smooth ramp between.
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    original = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = original / low, original / high
    smooth = (original / wavelen - low) / (high - low)
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    ramp = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return torch.where(mid, ramp, scaled)


def _longrope_table(head_dim: int, max_position: int, base: float, scaling: dict) -> torch.Tensor:  # type: ignore[type-arg]
    # Phi-3.5 / Phi-4 (LongRoPE): each frequency divided by its own factor, `short_factor` for the
    # positions of the original context and `long_factor` past it, both tables times the attention
    # factor. NOTE(longrope): by position, as an incremental decode in transformers rotates them; its
    # one-shot forward of a prompt longer than the original context uses the long factors for
    # every position instead.
    original = int(scaling["original_max_position_embeddings"])
    factor = float(scaling.get("factor") or max_position / original)
    attention = scaling.get("attention_factor")
    if attention is None:
        attention = math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1.0 else 1.0
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    t = torch.arange(max_position, dtype=torch.float64)
    tables = []
    for key, rows in (("short_factor", t[:original]), ("long_factor", t[original:])):
        ext = torch.tensor(scaling[key], dtype=torch.float64)
        if ext.numel() != head_dim // 2:
            raise ValueError(f"longrope {key} has {ext.numel()} values, the head needs {head_dim // 2}")
        freqs = torch.outer(rows, 1.0 / (ext * base**exponents))  # (n, D/2)
        tables.append(torch.cat([freqs.cos(), freqs.sin()], dim=-1) * float(attention))
    return torch.cat(tables).float()
