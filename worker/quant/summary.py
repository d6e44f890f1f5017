"""What quantization did to the weights, for the load log; random quantized weights for benchmarks."""

from __future__ import annotations

import logging

import torch
from torch import nn

from worker.models.moe import SparseMoE
from worker.quant import QuantMethod, quantizable_linears, replace_module, weight_bytes
from worker.quant.experts import QuantExperts, quantize_experts

__all__ = ["log_weights", "randomize"]

log = logging.getLogger("genfleet.worker.quant")


def log_weights(model: nn.Module, method: QuantMethod | None, dtype: torch.dtype) -> int:
    """Logs the weight bytes; returns the bytes the quantized linears save against `dtype`."""
    total, packed = weight_bytes(model)
    if method is None:
        log.info("weights: %.2f GiB in %s", total / 2**30, dtype)
        return 0
    quantized = [m for m in model.modules() if hasattr(m, "packed_bytes")]
    dense = sum(m.in_features * m.out_features * (m.num_experts if isinstance(m, QuantExperts) else 1)
                for m in quantized) * torch.empty((), dtype=dtype).element_size()
    cpu = any(getattr(m, "dense", None) is not None for m in quantized)
    log.info(
        "weights: %.2f GiB; quantization %s: %d linears and expert stacks hold %.2f GiB where %s would take %.2f GiB%s",
        total / 2**30, method.describe(), len(quantized), packed / 2**30, dtype, dense / 2**30,
        " (on the CPU they are also kept dequantized, for the matmul)" if cpu else "",
    )
    return max(0, dense - packed)


def randomize(model: nn.Module, method: QuantMethod, dtype: torch.dtype, device: torch.device) -> None:
    for path, dense in quantizable_linears(model).items():
        replace_module(model, path, method.random(dense.out_features, dense.in_features, dtype, device))
    if any(isinstance(m, SparseMoE) for m in model.modules()):
        quantize_experts(model, method, dtype, random=True)
