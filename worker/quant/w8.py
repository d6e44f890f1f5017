"""The one-byte weight layouts: FP8 (e4m3) and int8, each with a float32 scale per output channel.

`W8Linear` holds `weight` (N, K) float8_e4m3fn or int8 and `scale` (N,) float32; the weight it
stands for is W[n] = weight[n] * scale[n] (a per-tensor checkpoint scale is repeated per row).
Methods: fp8 and compressed-tensors float-quantized (worker/quant/fp8.py), eetq and bitsandbytes
(worker/quant/int8.py).

On CUDA each (shape, batch bucket) runs the fastest of its paths, timed once on first use
(outside graph capture; worker/ops.py `gpu_milliseconds`):
- `w8_linear` (genfleet_kernels/w8_linear.py), up to 16 rows `w8_gemv` (genfleet_kernels/w8_gemv.py): x stays in its dtype,
  each weight byte is read once and converted in registers (the small-batch path of both layouts);
- FP8 only, up to 16 rows: `w8a8_gemv` (genfleet_kernels/w8a8_gemv.py), x quantized per token inside the
  kernel, the product on FP8 tensor cores (the numerics of the scaled_mm path below);
- FP8 only: x quantized per token (genfleet_kernels/quantize_fp8_rows.py), then torch._scaled_mm with row-wise
  scales on FP8 tensor cores (the large-batch path);
- int8 only: the weight converted to x's dtype, a dense matmul, the scales on the output.
On the CPU the weight is dequantized once at load and the product is a plain float matmul.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["W8Linear", "w8_choices", "fp8_rows"]

log = logging.getLogger("genfleet.worker.quant")

# (kind, N, K, batch bucket, dtype) -> the path's name; filled on first use per key.
_CHOICE: dict[tuple[str, int, int, int, torch.dtype], str] = {}
_WIDEST_GEMV = 256  # batch buckets above this never try w8_linear
GEMV_ROWS = 16  # the most rows w8_gemv and w8a8_gemv take (batch-1 verification, small batches)
# w8_gemv configs tried beside genfleet_kernels/w8_gemv.GEMV_CONFIGS (all at one row, the first at 2-16): int8 bytes made
# float32 by integer operations (`bits`, no quarter-rate I2F), and K split in two where K is long (down). FP8
# skips `bits`: its sm_90 build takes 7.9-8.9 instructions a weight value against the plain 3.9-4.3 (the
# plain f16 -> f32 step is one HADD2.F32, docs/perf.md).
_GEMV_MORE = ((8, 1024, 8, 3, 1, True), (2, 2048, 4, 4, 1, True), (8, 1024, 8, 3, 2, False))
_SPLIT_FROM_K = 8192


class W8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        assert weight.dtype in (torch.float8_e4m3fn, torch.int8) and weight.dim() == 2, weight.dtype
        self.out_features, self.in_features = weight.shape
        self.kind = "fp8" if weight.dtype == torch.float8_e4m3fn else "int8"
        self.register_buffer("weight", weight.to(device).contiguous())  # (N, K)
        self.register_buffer("scale", scale.to(device=device, dtype=torch.float32).reshape(-1).contiguous())  # (N,)
        if device.type == "cuda":  # split-K's tile counters, allocated outside any graph capture
            from genfleet_kernels.split_k import counters

            counters(device, 1)
        self.bias = None if bias is None else nn.Parameter(bias.to(device=device, dtype=dtype), requires_grad=False)
        # CPU: the weight dequantized once, in `dtype`.
        self.dense: torch.Tensor | None = None
        if device.type != "cuda":
            self.dense = (self.weight.float() * self.scale.unsqueeze(1)).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (T, K) -> (T, N)
        if self.dense is not None:
            return F.linear(x, self.dense, self.bias)
        paths = self._paths(x)
        key = (self.kind, self.out_features, self.in_features, _bucket(x.shape[0]), x.dtype)
        if key not in _CHOICE:
            if torch.cuda.is_current_stream_capturing():
                return paths[next(iter(paths))]()
            _CHOICE[key] = _fastest(paths)
            log.info("%s linear %dx%d, batch <= %d: %s", self.kind, self.in_features, self.out_features, key[3], _CHOICE[key])
        return paths[_CHOICE[key]]()

    def _paths(self, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
        from genfleet_kernels.w8_gemv import GEMV_CONFIGS, gemv_config, gemv_name, w8_gemv
        from genfleet_kernels.w8_linear import W8_CONFIGS, w8_linear
        from genfleet_kernels.w8a8_gemv import W8A8_CONFIGS, w8a8_gemv, w8a8_name

        # The first path is what runs where a graph is captured before its key was timed: no split-K.
        paths: dict[str, Callable[[], torch.Tensor]] = {}
        if self.kind == "fp8" and _scaled_mm_fits(x, self.weight):
            paths["fp8 scaled_mm"] = lambda: self._scaled_mm(x)
        if self.kind == "int8":
            paths["dequant + matmul"] = lambda: self._dequant_matmul(x)
        rows = x.shape[0]
        if rows <= GEMV_ROWS:
            for config in (GEMV_CONFIGS if rows == 1 else GEMV_CONFIGS[:1]) + _GEMV_MORE:
                _, _, _, _, split, bits = gemv_config(config)
                if (split > 1 and self.in_features < _SPLIT_FROM_K) or (bits and self.kind == "fp8"):
                    continue
                paths[gemv_name(config)] = lambda c=config: w8_gemv(x, self.weight, self.scale, self.bias, c)
        if self.kind == "fp8" and rows <= GEMV_ROWS:
            for w8a8 in W8A8_CONFIGS:
                paths[w8a8_name(w8a8)] = lambda c=w8a8: w8a8_gemv(x, self.weight, self.scale, self.bias, c)
        if 1 < rows <= _WIDEST_GEMV:  # at one row the GEMVs always won (docs/perf.md)
            for config in W8_CONFIGS:
                if config[0] <= 2 * max(16, rows):  # no tile far taller than the batch
                    paths["w8_linear %dx%dx%d/w%d/s%d" % config] = (
                        lambda c=config: w8_linear(x, self.weight, self.scale, self.bias, c)
                    )
        return paths

    def _scaled_mm(self, x: torch.Tensor) -> torch.Tensor:
        from genfleet_kernels.quantize_fp8_rows import quantize_fp8_rows

        xq, x_scale = quantize_fp8_rows(x)  # (T, K) fp8, (T, 1)
        return torch._scaled_mm(  # type: ignore[no-any-return]
            xq, self.weight.t(), scale_a=x_scale, scale_b=self.scale.unsqueeze(0), bias=self.bias, out_dtype=x.dtype
        )

    def _dequant_matmul(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)  # (T, N)
        return out if self.bias is None else out + self.bias

    def packed_bytes(self) -> int:
        return self.weight.numel() + self.scale.numel() * 4

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.kind}, per-channel scales"


def w8_choices() -> dict[str, str]:
    """What each one-byte linear picked so far: "kind KxN batch<=B" -> path."""
    return {f"{k[0]} {k[2]}x{k[1]} batch<={k[3]}": v for k, v in _CHOICE.items()}


def fp8_rows(shards: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A float-quantized checkpoint's linear, per shard `weight` e4m3 (N_i, K) and `weight_scale`
    (1,) or (N_i, 1): the shards' rows stacked, (N, K) e4m3, and a scale per row, (N,) float32."""
    weights, scales = [], []
    for s in shards:
        w = s["weight"]
        if w.dtype != torch.float8_e4m3fn:
            raise ValueError(f"float-quantized weight is {w.dtype}; float8_e4m3fn loads")
        scale = s["weight_scale"].float().reshape(-1)
        if scale.numel() not in (1, w.shape[0]):
            raise ValueError(f"weight_scale of {scale.numel()} values for {w.shape[0]} rows: per tensor or per channel loads")
        weights.append(w)
        scales.append(scale.expand(w.shape[0]))
    return torch.cat(weights), torch.cat(scales)


def _fastest(paths: dict[str, Callable[[], torch.Tensor]]) -> str:
    # Timed as graph replays: the decode steps that matter most run inside CUDA graphs. A path that
    # fails to build, or whose output is off the first path's by more than rounding (W8A8 against
    # weight-only differs by a few percent), is left out with a warning.
    from worker.ops import gpu_milliseconds

    first, *others = paths
    want = paths[first]().float()
    took = {first: gpu_milliseconds(paths[first], graphed=True)}
    for name in others:
        try:
            err = float((paths[name]().float() - want).norm() / want.norm().clamp(min=1e-30))
            if not err < 0.1:  # NaN fails too
                log.warning("one-byte linear path %s left out: relative error %.2e against %s", name, err, first)
                continue
            took[name] = gpu_milliseconds(paths[name], graphed=True)
        except Exception as exc:  # a kernel that does not build on this card must not stop the worker
            log.warning("one-byte linear path %s left out: %s: %s", name, type(exc).__name__, str(exc)[:200])
    return min(took, key=lambda name: took[name])


def _bucket(m: int) -> int:
    return 1 << max(0, m - 1).bit_length()  # the power of two at or above m


def _scaled_mm_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # cuBLASLt FP8 with row-wise scales: sm89+, bfloat16 output, dimensions in multiples of 16.
    n, k = weight.shape
    return x.is_cuda and x.dtype == torch.bfloat16 and k % 16 == 0 and n % 16 == 0 and torch.cuda.get_device_capability(x.device) >= (8, 9)
