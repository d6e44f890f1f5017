"""4-bit codebook weights on the fly: `--quantize bitsandbytes-nf4` and `--quantize bitsandbytes-fp4`.

As bitsandbytes' `quantize_4bit(blocksize=64)` defines them: each run of 64 weights along a row
is divided by its absmax and stored as the index of the nearest of the 16 NF4 (or FP4) codebook
values; the codebooks are the library's (genfleet_kernels/reference.py CODEBOOKS_4BIT, checked against
bitsandbytes in the tests). The absmax stays float32: TGI's `compress_statistics` (an 8-bit
second quantization of the absmax) is a storage saving of 0.37 bits per weight not made here.

The values are not evenly spaced, so q4's integer layout cannot hold them; the kernels look the
indices up: one row by a fused GEMV (genfleet_kernels/lut4_gemv.py), more rows by dequantizing into the
activations' dtype (genfleet_kernels/dequantize_4bit.py) and a dense matmul. On the CPU the weight is
dequantized once at load.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from genfleet_kernels.reference import CODEBOOKS_4BIT, dequantize_4bit, quantize_4bit
from worker.quant.registry import QuantMethod, register

__all__ = ["Lut4Linear", "Bitsandbytes4bit"]

_BLOCK = 64


class Lut4Linear(nn.Module):
    def __init__(self, dense: torch.Tensor, codebook: str, bias: torch.Tensor | None,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.out_features, self.in_features = dense.shape
        if self.in_features % _BLOCK:
            raise ValueError(f"in_features {self.in_features} is not a multiple of the 4-bit block size {_BLOCK}")
        self.codebook = codebook
        self.register_buffer("code", torch.tensor(CODEBOOKS_4BIT[codebook], dtype=torch.float32, device=device))  # (16,)
        packed, absmax = quantize_4bit(dense.to(device), self.code, _BLOCK)
        self.register_buffer("packed", packed)  # (N, K / 2) uint8
        self.register_buffer("absmax", absmax)  # (N, K / 64) float32
        self.bias = None if bias is None else nn.Parameter(bias.to(device=device, dtype=dtype), requires_grad=False)
        self.dense: torch.Tensor | None = None  # CPU: the weight dequantized once, in `dtype`
        if device.type != "cuda":
            self.dense = dequantize_4bit(self.packed, self.absmax, self.code).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (T, K) -> (T, N)
        if self.dense is not None:
            return F.linear(x, self.dense, self.bias)
        from genfleet_kernels.dequantize_4bit import dequantize_4bit as dequantize
        from genfleet_kernels.lut4_gemv import lut4_gemv

        if x.shape[0] == 1:
            return lut4_gemv(x, self.packed, self.absmax, self.code, self.bias)
        weight = dequantize(self.packed, self.absmax, self.code, x.dtype)  # (N, K)
        return F.linear(x, weight, self.bias)

    def packed_bytes(self) -> int:
        return self.packed.numel() + self.absmax.numel() * 4 + self.code.numel() * 4

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.codebook}, block {_BLOCK}"


class Bitsandbytes4bit(QuantMethod):
    tensor_names: ClassVar[tuple[str, ...]] = ("weight",)
    on_the_fly: ClassVar[bool] = True
    codebook: ClassVar[str]

    def build(self, shards: list[dict[str, torch.Tensor]], bias: torch.Tensor | None,
              dtype: torch.dtype, device: torch.device) -> nn.Module:
        return Lut4Linear(torch.cat([s["weight"] for s in shards]), self.codebook, bias, dtype, device)

    def describe(self) -> str:
        return f"{self.name} (4-bit {self.codebook} codebook, blocks of {_BLOCK} with float32 absmax)"

    def random(self, out_features: int, in_features: int, dtype: torch.dtype, device: torch.device) -> nn.Module:
        dense = torch.randn(out_features, in_features, device=device) / in_features**0.5
        return Lut4Linear(dense, self.codebook, None, dtype, device)


@register
class Nf4(Bitsandbytes4bit):
    name: ClassVar[str] = "bitsandbytes-nf4"
    codebook: ClassVar[str] = "nf4"


@register
class Fp4(Bitsandbytes4bit):
    name: ClassVar[str] = "bitsandbytes-fp4"
    codebook: ClassVar[str] = "fp4"
