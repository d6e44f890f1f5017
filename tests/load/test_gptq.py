"""load/gptq.py: GPTQ against round-to-nearest on one linear, and the grid it writes."""

from __future__ import annotations

import pytest
import torch

from load.gptq import gptq_quantize, layer_error
from tests.worker.quant.rtn import quantize


def _correlated_inputs(rows: int, k: int, seed: int = 0, tokens_seed: int = 0) -> torch.Tensor:  # (rows, K)
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5  # channels share sources, as activations do
    scale = torch.rand(k, generator=g) * 3 + 0.1  # and differ in size
    t = torch.Generator().manual_seed(1000 + tokens_seed)
    return (torch.randn(rows, k, generator=t) @ mix + 0.1 * torch.randn(rows, k, generator=t)) * scale


@pytest.mark.parametrize("act_order", [False, True], ids=["in-order", "act-order"])
def test_gptq_output_error_is_below_round_to_nearest(act_order: bool) -> None:
    torch.manual_seed(0)
    w = torch.randn(96, 256) * 0.05  # (N, K)
    x = _correlated_inputs(2048, 256)
    qz = gptq_quantize(w, 2 * x.t() @ x / x.shape[0], group_size=64, act_order=act_order)
    rtn = layer_error(w, quantize(w, 4, 64, sym=False).dequantized(), x)
    gptq = layer_error(w, qz.dequantized(), x)
    assert gptq < 0.7 * rtn, (gptq, rtn)
    held_out = _correlated_inputs(2048, 256, tokens_seed=1)  # the same channels, tokens not calibrated on
    assert layer_error(w, qz.dequantized(), held_out) < 0.8 * layer_error(w, quantize(w, 4, 64, sym=False).dequantized(), held_out)


@pytest.mark.parametrize("act_order", [False, True], ids=["in-order", "act-order"])
def test_gptq_grid_is_the_formats_grid(act_order: bool) -> None:
    torch.manual_seed(1)
    w = torch.randn(16, 128) * 0.1
    x = _correlated_inputs(512, 128, seed=2)
    qz = gptq_quantize(w, x.t() @ x, group_size=64, act_order=act_order)
    assert qz.q.dtype == torch.int64 and int(qz.q.min()) >= 0 and int(qz.q.max()) <= 15
    assert int(qz.zeros.min()) >= 0 and int(qz.zeros.max()) <= 15
    assert qz.scales.dtype == torch.float16 and qz.scales.shape == (16, 2)
    assert torch.equal(qz.g_idx, torch.arange(128) // 64)  # contiguous groups: AWQ's layout holds it
    # The dequantized weight is exactly (q - z) * s on the stored fp16 scales.
    expected = (qz.q - qz.zeros.repeat_interleave(64, 1)).float() * qz.scales.float().repeat_interleave(64, 1)
    assert torch.equal(qz.dequantized(), expected)


def test_dead_input_channels_are_quantized_to_zero() -> None:
    w = torch.randn(8, 64)
    x = torch.randn(256, 64)
    x[:, 5] = 0  # a channel no calibration token uses
    qz = gptq_quantize(w, x.t() @ x, group_size=64)
    assert torch.all(qz.dequantized()[:, 5] == 0)
