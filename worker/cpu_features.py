"""What the host CPU computes natively, for choices made once at start (the CPU's default dtype)."""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["native_bf16"]

# AVX512-BF16's dot products or AMX's tiles: oneDNN's bfloat16 GEMMs run at twice float32's rate
# on half its bytes (SmolLM2 decode steps measured 1.7-2.2x faster than float32, docs/perf.md);
# without them bfloat16 is emulated and slower than float32.
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux: no way to tell, so the safe float32
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return not _BF16_FLAGS.isdisjoint(flags)
