"""load/int_grid.py: the asymmetric grid holds 0 and each group's extremes within half a stored
step; the AWQ search's round trip is the tests' round-to-nearest quantizer's dequantized weight."""

from __future__ import annotations

import torch

from load.int_grid import asymmetric_grid, fake_quantize, round_to_grid
from tests.worker.quant.rtn import quantize


def test_the_grid_holds_zero_and_each_groups_extremes() -> None:
    g = torch.randn(40, 6, 64, generator=torch.Generator().manual_seed(0))  # (N, NG, G)
    g[0, 0] = g[0, 0].abs() + 0.1  # a group of positive weights: its range still reaches down to 0
    scale, zero = asymmetric_grid(g, 4)
    assert scale.dtype == torch.float16 and zero.dtype == torch.int64
    assert int(zero.min()) >= 0 and int(zero.max()) <= 15 and int(zero[0, 0]) == 0
    s, z = scale.float()[..., None], zero[..., None]
    codes = round_to_grid(g, s, z, 4)  # (N, NG, G)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 15
    error = (g - (codes - z) * s).abs()  # (N, NG, G)
    assert bool((error <= s / 2 * (1 + 1e-3)).all())  # fp16 scales move the ends by under 0.1%
    assert int(asymmetric_grid(g, 4, min_zero=1)[1].min()) == 1


def test_fake_quantize_is_the_round_to_nearest_quantizers_weight() -> None:
    w = torch.randn(24, 192, generator=torch.Generator().manual_seed(1))
    for group_size in (32, 64):
        assert torch.equal(fake_quantize(w, group_size), quantize(w, 4, group_size, sym=False).dequantized())
