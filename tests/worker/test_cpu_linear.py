"""bfloat16 linears on the CPU from weights packed once at load (worker/cpu_linear.py)."""

from __future__ import annotations

import gc

import torch
import torch.nn.functional as F
from torch import nn

from worker import cpu_linear, ops


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(64, 32)
        self.proj = nn.Linear(32, 48, bias=True)
        self.lm_head = None


def _model(dtype: torch.dtype) -> _Tied:
    torch.manual_seed(0)
    return _Tied().to(dtype).requires_grad_(False)


def test_packed_linears_equal_torch_bit_for_bit() -> None:
    model = _model(torch.bfloat16)
    assert cpu_linear.pack_weights(model, torch.bfloat16) == 2 * (64 * 32 + 48 * 32)
    for rows in (1, 4, 33):
        x = torch.randn(rows, 32).to(torch.bfloat16)
        for weight, bias in ((model.proj.weight, model.proj.bias), (model.embed_tokens.weight, None)):
            assert id(weight) in cpu_linear._packed
            assert torch.equal(ops.linear(x, weight, bias), F.linear(x, weight, bias))
    # A weight the model does not hold, float32, and a 3-D input take plain F.linear.
    other = torch.randn(8, 32).to(torch.bfloat16)
    assert torch.equal(cpu_linear.linear(x, other), F.linear(x, other))
    x3 = torch.randn(2, 3, 32).to(torch.bfloat16)
    assert torch.equal(cpu_linear.linear(x3, model.proj.weight), F.linear(x3, model.proj.weight))


def test_float32_is_left_to_torch_and_freed_weights_leave() -> None:
    model = _model(torch.float32)
    assert cpu_linear.pack_weights(model, torch.float32) == 0 and id(model.proj.weight) not in cpu_linear._packed
    model = _model(torch.bfloat16)
    cpu_linear.pack_weights(model, torch.bfloat16)
    key = id(model.proj.weight)
    assert key in cpu_linear._packed
    del model
    gc.collect()
    assert key not in cpu_linear._packed
