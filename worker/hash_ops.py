"""splitmix64's finaliser with int64 tensor ops (common/splitmix.py is the same on Python ints).

torch's int64 multiply and add wrap mod 2**64 on CPU and CUDA alike, and `>>` is arithmetic, so
each shift masks off the copies of the sign bit: the result is bit-identical to the unsigned
version. The sampler's noise and the watermark's green lists hash with it.
"""

from __future__ import annotations

import torch

from common import splitmix

__all__ = ["GOLDEN", "MIX1", "mix"]

GOLDEN = splitmix.as_int64(splitmix.GOLDEN)
MIX1 = splitmix.as_int64(splitmix.MIX1)
_MIX2 = splitmix.as_int64(splitmix.MIX2)


def mix(x: torch.Tensor) -> torch.Tensor:  # int64, any shape
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * MIX1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _MIX2
    return x ^ ((x >> 31) & ((1 << 33) - 1))
