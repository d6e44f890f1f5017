"""The sampler's grammar stage: each constrained row's allowed tokens as a bitmask, applied on device.

`prepare` fills one int32 bitmask row per constrained request on the host (llguidance, ~tens of
µs a row, spread over llguidance's own threads from `_PARALLEL_ROWS` rows up), in pinned memory on
CUDA, and queues its copy to the device with the row indices: no host sync. The model runner calls
it once the step's forward is queued (worker/model_runner.py `sample`), so on CUDA it runs while
the device computes. `apply` sets every disallowed logit of those rows to -inf. Unconstrained rows
are not touched, and a step with no constrained row pays nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import llguidance
import torch

from worker.input_builder import upload

__all__ = ["GrammarMask", "prepare", "apply"]

_BITS = 32
_PARALLEL_ROWS = 4  # below this many rows a hop to the executor's threads costs more than it saves


@dataclass(slots=True)
class GrammarMask:
    rows: torch.Tensor  # (G,) int64 on the device: the constrained rows of the step's logits
    bitmask: torch.Tensor  # (G, ceil(V / 32)) int32 on the device: bit t of word w allows token 32w + t


def prepare(matchers: list[llguidance.LLMatcher | None], vocab_size: int, device: torch.device) -> GrammarMask | None:
    rows = [j for j, m in enumerate(matchers) if m is not None]
    if not rows:
        return None
    words = -(-vocab_size // _BITS)
    host = torch.empty((len(rows), words), dtype=torch.int32, pin_memory=device.type == "cuda")  # (G, W)
    constrained = [(matchers[j], k) for k, j in enumerate(rows)]
    if len(rows) >= _PARALLEL_ROWS:
        _executor().unsafe_compute_mask_ptr(constrained, host.data_ptr(), words * 4, len(rows))  # type: ignore[arg-type]
    else:
        for matcher, k in constrained:
            matcher.unsafe_compute_mask_ptr(host[k].data_ptr(), words * 4)  # type: ignore[union-attr]
    return GrammarMask(upload(torch.tensor(rows, dtype=torch.int64), device), upload(host, device))


@functools.cache
def _executor() -> llguidance.LLExecutor:
    """llguidance's worker threads, started on first use and shared by every step."""
    return llguidance.LLExecutor()


def apply(logits: torch.Tensor, mask: GrammarMask) -> torch.Tensor:
    """logits (B, V) float32 -> the same with each constrained row's disallowed tokens at -inf."""
    vocab = logits.shape[-1]
    shifts = torch.arange(_BITS, device=logits.device, dtype=torch.int32)  # (32,)
    allowed = (mask.bitmask.unsqueeze(-1) >> shifts) & 1  # (G, W, 32)
    allowed = allowed.view(mask.bitmask.shape[0], -1)[:, :vocab].bool()  # (G, V)
    constrained = logits.index_select(0, mask.rows).masked_fill(~allowed, float("-inf"))  # (G, V)
    return logits.index_copy(0, mask.rows, constrained)
