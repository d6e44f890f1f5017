"""Each layer's sliding window, read from config.json the way transformers reads it per family.

A window W means query position p sees keys p - W + 1 .. p (itself included), as transformers'
sliding-window mask; 0 is full attention. `ModelConfig.layer_windows` holds one per layer (empty:
none slides). The attention kernels read no page before a layer's window; where every layer
slides, the block manager also gives such pages back (ModelConfig.kv_window).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker.models.config import UnsupportedModel

__all__ = ["window_size", "uniform_windows", "typed_windows", "qwen_windows"]


def window_size(raw: dict[str, Any], gated: bool = False) -> int:
    """config.json's `sliding_window` (0 when unset); `gated`: only while `use_sliding_window` is
    true (the Qwen families, where transformers drops the window otherwise)."""
    if gated and not raw.get("use_sliding_window", False):
        return 0
    return int(raw.get("sliding_window") or 0)


def uniform_windows(raw: dict[str, Any], gated: bool = False) -> tuple[int, ...]:
    """Every layer under the same window (Mistral, Mixtral, StarCoder2, Qwen3-MoE)."""
    window = window_size(raw, gated)
    return (window,) * int(raw["num_hidden_layers"]) if window else ()


def typed_windows(raw: dict[str, Any], sliding: Callable[[int], bool], gated: bool = False) -> tuple[int, ...]:
    """The window of each layer: config.json's `layer_types` where it names them, else the family's
    rule `sliding(layer)` (Gemma 2: odd layers; Qwen2: from max_window_layers on)."""
    window = window_size(raw, gated)
    if not window:
        return ()
    layers = int(raw["num_hidden_layers"])
    types = raw.get("layer_types") or ["sliding_attention" if sliding(i) else "full_attention" for i in range(layers)]
    unknown = set(types) - {"full_attention", "sliding_attention"}
    if unknown or len(types) != layers:
        raise UnsupportedModel(f"{raw.get('architectures')}: layer types {sorted(unknown) or types} are not supported")
    return tuple(window if t == "sliding_attention" else 0 for t in types)


def qwen_windows(raw: dict[str, Any]) -> tuple[int, ...]:
    """Qwen2 and Qwen3: with `use_sliding_window`, the layers from `max_window_layers` on."""
    below = int(raw.get("max_window_layers", 28))
    return typed_windows(raw, lambda i: i >= below, gated=True)
