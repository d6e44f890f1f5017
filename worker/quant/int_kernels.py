"""The CUDA forward of IntWeightLinear: the integer weight-only product on the device."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kernels import reference

if TYPE_CHECKING:
    from worker.quant.int_weight import IntWeightLinear

__all__ = ["int_weight_linear"]


def int_weight_linear(x: torch.Tensor, layer: IntWeightLinear) -> torch.Tensor:  # (T, K) -> (T, N)
    return reference.int_weight_linear(
        x, layer.qweight, layer.scales, layer.zeros, layer.group_size, layer.bits, layer.perm, layer.bias
    )
