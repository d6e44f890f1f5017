"""Medusa heads (Cai et al., arXiv 2401.10774), read from the layout TGI and the Medusa project use.

`medusa_lm_head.safetensors` holds, for head i and residual block j < medusa_num_layers,
`{i}.{j}.linear.weight` (H, H) and `.bias` (H,): a block maps x to x + SiLU(W x + b). Then
either each head's own projection to the vocabulary, `{i}.{L}.weight` (V, H) (Medusa-1, TGI's
MedusaHeadV1), or none, and every head shares the target's LM head (TGI's MedusaHeadV2). Head i
reads the hidden state of the position that sampled token t and predicts the token i + 1 places
after t; its greedy choice is draft i. config.json gives medusa_num_heads and medusa_num_layers;
beside a model's own weights (no such keys) they are read from the file's tensor names.

All heads run as one batched matmul per residual block (and one for the projections).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from common.model_source import MEDUSA_FILE
from worker.speculative.heads import HeadTensors, SpeculatorError, register

if TYPE_CHECKING:
    from worker.models import CausalLM, ModelConfig

__all__ = ["MedusaHeads"]

_BLOCK = re.compile(r"^(\d+)\.(\d+)\.linear\.weight$")


class MedusaHeads:
    method = "medusa"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor | None) -> None:
        self.weight = weight  # (K, L, H, H) model dtype, device: each head's residual blocks
        self.bias = bias  # (K, L, H)
        self.out = out  # (K, V, H): each head's own projection; None: the target's LM head
        self.num_heads = weight.shape[0]

    def propose(self, hidden: torch.Tensor, token_ids: torch.Tensor, model: CausalLM) -> torch.Tensor:
        k, num_layers = self.weight.shape[:2]
        x = hidden.unsqueeze(0).expand(k, -1, -1)  # (K, P, H)
        for j in range(num_layers):
            x = x + F.silu(torch.baddbmm(self.bias[:, j].unsqueeze(1), x, self.weight[:, j].transpose(1, 2)))
        if self.out is not None:
            logits = torch.bmm(x, self.out.transpose(1, 2))  # (K, P, V)
        else:
            logits = model.compute_logits(x.reshape(-1, x.shape[-1])).view(k, x.shape[1], -1)  # (K, P, V)
        return logits.argmax(dim=-1).T.contiguous()  # (P, K) int64


def _layout(raw: dict[str, Any], directory: Path) -> tuple[int, int]:
    """(heads, residual blocks per head): from config.json, else from the file's tensor names."""
    if "medusa_num_heads" in raw:
        heads, layers = raw.get("medusa_num_heads"), raw.get("medusa_num_layers", 1)
        if not isinstance(heads, int) or not isinstance(layers, int) or heads < 1 or layers < 1:
            raise SpeculatorError(
                f"Medusa heads in {directory}: config.json's medusa_num_heads and medusa_num_layers must be "
                f"integers >= 1, got {heads!r} and {layers!r}"
            )
        return heads, layers
    tensors = HeadTensors([directory / MEDUSA_FILE], "Medusa")
    blocks = [tuple(map(int, m.groups())) for name in tensors.tensors if (m := _BLOCK.match(name))]
    if not blocks:
        raise SpeculatorError(f"Medusa heads: {directory / MEDUSA_FILE} has no `{{head}}.{{block}}.linear.weight` tensor")
    return max(h for h, _ in blocks) + 1, max(b for _, b in blocks) + 1


def _num_heads(raw: dict[str, Any], directory: Path) -> int:
    return _layout(raw, directory)[0]


def _load(directory: Path, raw: dict[str, Any], target: ModelConfig, k: int, dtype: torch.dtype,
          device: torch.device) -> MedusaHeads:
    path = directory / MEDUSA_FILE
    if not path.is_file():
        legacy = directory / "medusa_lm_head.pt"
        hint = f"; {legacy.name} is a pickle, which is never loaded: convert it to safetensors" if legacy.is_file() else ""
        raise SpeculatorError(f"Medusa heads: {path} is missing{hint}")
    _, num_layers = _layout(raw, directory)
    tensors = HeadTensors([path], "Medusa")
    h, v = target.hidden_size, target.vocab_size
    weight = torch.stack([torch.stack([tensors.take(f"{i}.{j}.linear.weight", (h, h), dtype, device)
                                       for j in range(num_layers)]) for i in range(k)])  # (K, L, H, H)
    bias = torch.stack([torch.stack([tensors.take(f"{i}.{j}.linear.bias", (h,), dtype, device)
                                     for j in range(num_layers)]) for i in range(k)])  # (K, L, H)
    own = [tensors.has(f"{i}.{num_layers}.weight") for i in range(k)]
    if any(own) and not all(own):
        missing = [f"{i}.{num_layers}.weight" for i in range(k) if not own[i]]
        raise SpeculatorError(f"Medusa heads in {path}: some heads have their own projection, not {', '.join(missing)}")
    out = torch.stack([tensors.take(f"{i}.{num_layers}.weight", (v, h), dtype, device) for i in range(k)]) if all(own) else None
    return MedusaHeads(weight, bias, out)


register("medusa", _num_heads, _load)
