"""Triton kernels, one file each, with torch references in kernels/reference.py.

Launchers load on first use, so `kernels.reference` imports without Triton installed (and
TRITON_INTERPRET, read when a kernel is defined, can still be set by the CPU tests). No module is
named after a launcher: importing the module would shadow the launcher on this package.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "store_kv",
    "paged_attention",
    "paged_decode_attention",
    "prefill_attention",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
]

_HOME = {
    "store_kv": "kernels.kv_store",
    "paged_attention": "kernels.decode_attention",
    "paged_decode_attention": "kernels.decode_attention",
    "prefill_attention": "kernels.varlen_attention",
    "rms_norm": "kernels.rmsnorm",
    "rotary_embedding": "kernels.rotary",
    "silu_and_mul": "kernels.activation",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
