"""Dense bfloat16 linears on the CPU from weights packed once into oneDNN's blocked layout.

torch's bfloat16 `F.linear` on the CPU hands oneDNN a plain row-major weight, which it reorders
into its blocked layout on every call: a decode step read and rewrote every weight before using
it. Packed once at load (`pack_weights`), the same products run about twice as fast (the decoder
layers' shapes and SmolLM2's LM head at 1 and 4 rows) and give bitwise the same results.
`linear(x, weight, bias)` takes the packed copy of `weight` when there is one (worker/ops.py calls
it for every dense linear on the CPU), plain `F.linear` otherwise: float32 (MKL's GEMMs gained
little), quantized linears (their own modules), or a model whose packed copies would not fit.
"""

from __future__ import annotations

import logging
import os
import weakref

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["pack_weights", "linear"]

log = logging.getLogger("genfleet.worker.cpu_linear")

# id(weight) -> (the weight, its packed copy); an entry goes when its weight is freed.
_packed: dict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor]] = {}


def pack_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Pack the dense linears' weights (and a tied LM head's) of a bfloat16 model; returns the bytes packed."""
    if dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return 0
    weights = {id(m.weight): m.weight for m in model.modules() if type(m) is nn.Linear}
    embed = getattr(model, "embed_tokens", None)
    if getattr(model, "lm_head", None) is None and isinstance(embed, nn.Embedding):  # the tied LM head
        weights[id(embed.weight)] = embed.weight
    size = sum(w.numel() * w.element_size() for w in weights.values())
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if size > free // 2:  # a second copy of the weights must leave room for the KV pool
        log.info("CPU linears left unpacked: packed copies need %.2f GiB, %.2f GiB free", size / 2**30, free / 2**30)
        return 0
    for weight in weights.values():
        key = id(weight)
        _packed[key] = (weakref.ref(weight), torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1))
        weakref.finalize(weight, _packed.pop, key, None)
    log.info("CPU linears: %d weights packed for oneDNN (%.2f GiB)", len(weights), size / 2**30)
    return size


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    entry = _packed.get(id(weight))
    if entry is None or entry[0]() is not weight or x.dim() != 2 or x.dtype != weight.dtype:
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, entry[1], bias, "none", [], "")  # (T, N)
