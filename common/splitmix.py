"""splitmix64's finaliser on Python ints: the counter-based hash that worker/hash_ops.py computes
with int64 tensor ops. Both give the same 64 bits, so a host without torch can recompute what a
worker hashed on any device (the watermark's green lists)."""

from __future__ import annotations

__all__ = ["GOLDEN", "MIX1", "MIX2", "mix", "as_int64"]

# As unsigned 64-bit integers; as_int64 gives the views torch's int64 arithmetic uses.
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
_U64 = (1 << 64) - 1


def mix(x: int) -> int:
    x &= _U64
    x ^= x >> 30
    x = (x * MIX1) & _U64
    x ^= x >> 27
    x = (x * MIX2) & _U64
    return x ^ (x >> 31)


def as_int64(x: int) -> int:
    """Any integer, read as the two's-complement int64 of its low 64 bits."""
    return (x + (1 << 63)) % (1 << 64) - (1 << 63)
