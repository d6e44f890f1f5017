"""One switch between kernel implementations: Triton on CUDA where a kernel exists, torch otherwise.

Model code calls `ops.<name>(...)` only. `use_device(device)` is called once by the model runner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from kernels import reference

__all__ = ["use_device", "store_kv", "paged_attention", "rms_norm", "rotary_embedding", "silu_and_mul"]

log = logging.getLogger("genfleet.worker.ops")

_NAMES = ("store_kv", "paged_attention", "rms_norm", "rotary_embedding", "silu_and_mul")
_impl: dict[str, Callable[..., Any]] = {name: getattr(reference, name) for name in _NAMES}


def use_device(device: torch.device) -> dict[str, str]:
    """Pick each op's implementation for `device`; returns {op: "triton" | "torch"}."""
    chosen = {}
    triton_ops: dict[str, Callable[..., Any]] = {}
    if device.type == "cuda":
        import kernels

        for name in _NAMES:
            try:  # each launcher loads on first use; a missing one falls back alone
                triton_ops[name] = getattr(kernels, name)
            except Exception as exc:  # a broken Triton install must not stop the worker
                log.warning("Triton %s unavailable (%s); using the torch reference", name, exc)
    for name in _NAMES:
        _impl[name] = triton_ops.get(name, getattr(reference, name))
        chosen[name] = "triton" if name in triton_ops else "torch"
    return chosen


def store_kv(*args: Any, **kwargs: Any) -> Any:
    return _impl["store_kv"](*args, **kwargs)


def paged_attention(*args: Any, **kwargs: Any) -> Any:
    return _impl["paged_attention"](*args, **kwargs)


def rms_norm(*args: Any, **kwargs: Any) -> Any:
    return _impl["rms_norm"](*args, **kwargs)


def rotary_embedding(*args: Any, **kwargs: Any) -> Any:
    return _impl["rotary_embedding"](*args, **kwargs)


def silu_and_mul(*args: Any, **kwargs: Any) -> Any:
    return _impl["silu_and_mul"](*args, **kwargs)
