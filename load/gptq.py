"""GPTQ: one linear's 4-bit weights chosen against the Hessian of its inputs.

Written from the paper's description (Frantar et al., "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers", 2022). For a linear y = W x with calibration inputs X
(rows are tokens), the layer's output error for a quantized W' is tr((W - W') H (W - W')^T) / 2
with H = 2 X^T X. The columns (input channels) are quantized one at a time; the rounding error
of column i, divided by the i-th diagonal entry of the upper Cholesky factor U of H^-1, is spread
over the columns not yet quantized along U's row i (the optimal update of the remaining weights
for the error just made, the OBS step). Updates are applied lazily per block of columns.

Groups (of `group_size` input channels) take the asymmetric min-max grid of load/int_grid.py,
W = (q - z) * s with s in the format's fp16, computed from the group's weights as the
error feedback has left them when the first column of the group is reached. With `act_order` the
columns are visited in decreasing order of H's diagonal but each group's grid is fixed up front from
the original weights ("static groups"), so the groups stay contiguous: the result packs to AutoAWQ's
and GPTQ's desc_act=false layouts alike.

The result is the tests' `Quantized` record (tests/worker/quant/rtn.py), which the format packers
(tests/worker/quant/test_awq.py, test_gptq.py) turn into checkpoint tensors.
"""

from __future__ import annotations

import torch

from load.int_grid import asymmetric_grid, round_to_grid
from tests.worker.quant.rtn import Quantized

__all__ = ["gptq_quantize", "layer_error"]


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, *, bits: int = 4, group_size: int = 64,
                  damp: float = 0.01, block_size: int = 128, act_order: bool = False,
                  scale_dtype: torch.dtype = torch.float16) -> Quantized:
    """Args:
        w: (N, K) the linear's weight.
        hessian: (K, K) 2 X^T X (any positive scale: only its direction matters) over the
            calibration inputs X of the linear.
        damp: added to H's diagonal as a fraction of its mean, so H stays invertible.
    Returns the integers, zero points and scales of the quantized weight (groups contiguous)."""
    n, k = w.shape
    assert hessian.shape == (k, k), (hessian.shape, w.shape)
    assert k % group_size == 0, f"{k} input channels do not split into groups of {group_size}"
    work = w.double().clone()  # (N, K): the weights still to quantize, error feedback applied
    h = hessian.double().clone()  # (K, K)
    dead = h.diagonal() == 0  # channels no calibration token used: any value serves
    h[dead, dead] = 1.0
    work[:, dead] = 0.0
    h.diagonal().add_(damp * h.diagonal().mean())
    groups = k // group_size
    scales = torch.empty(n, groups, dtype=scale_dtype)
    zeros = torch.empty(n, groups, dtype=torch.int64)
    if act_order:
        for g in range(groups):  # static groups: grids from the weights before any feedback
            scales[:, g], zeros[:, g] = asymmetric_grid(work[:, g * group_size:(g + 1) * group_size], bits, scale_dtype)
        perm = torch.argsort(h.diagonal(), descending=True)
    else:
        perm = torch.arange(k)
    work = work[:, perm]
    h = h[perm][:, perm]
    u = _upper_cholesky_of_inverse(h)  # (K, K)
    q = torch.empty(n, k, dtype=torch.int64)  # in visiting order
    for start in range(0, k, block_size):
        end = min(start + block_size, k)
        errors = torch.empty(n, end - start, dtype=torch.float64)  # (N, B) scaled errors of the block
        for i in range(start, end):
            col = int(perm[i])
            g = col // group_size
            if not act_order and col % group_size == 0:
                scales[:, g], zeros[:, g] = asymmetric_grid(work[:, i:i + group_size], bits, scale_dtype)
            s, z = scales[:, g].double(), zeros[:, g]
            codes = round_to_grid(work[:, i], s, z, bits)  # (N,)
            q[:, i] = codes
            err = (work[:, i] - (codes - z) * s) / u[i, i]  # (N,)
            work[:, i + 1:end] -= err[:, None] * u[i, i + 1:end][None, :]
            errors[:, i - start] = err
        work[:, end:] -= errors @ u[start:end, end:]  # the block's feedback to every later column
    out = torch.empty_like(q)
    out[:, perm] = q
    return Quantized(out, zeros, scales, torch.arange(k) // group_size, bits, group_size)


def layer_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    """Squared output error of a linear, ||x W^T - x W_hat^T||^2, over inputs x (T, K)."""
    return float(((x.double() @ (w.double() - w_hat.double()).t()) ** 2).sum())


def _upper_cholesky_of_inverse(h: torch.Tensor) -> torch.Tensor:  # (K, K) -> (K, K)
    lower = torch.linalg.cholesky(h)
    inverse = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(inverse, upper=True)
