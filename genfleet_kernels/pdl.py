"""Programmatic dependent launch (PDL, sm_90+): a kernel may start while the kernel before it on the
stream is still finishing, so its launch and ramp-up overlap the other's tail. A decode step at
batch 1 is ~400 short kernels back to back (inside one CUDA graph), and the gaps between them are
a visible part of the step.

A kernel that takes part has a `PDL: tl.constexpr` parameter and calls `wait_then_release(PDL)`
before its first global memory access: there it waits until the previous grid has completed and
its writes are visible, then lets the next kernel launch. Its launcher passes `**launch()`. As
every taking part kernel waits before touching memory, the effects keep plain stream order, also
transitively: a kernel's work starts only after its predecessor finished, which itself waited for
its own. A kernel that does not take part (torch's, cuBLAS's) launches as usual.

Off unless `enable(True)` (worker/ops.use_device, the worker's --pdl); never on the CPU, under
TRITON_INTERPRET or below sm_90.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import triton
import triton.language as tl

try:  # Triton >= 3.4
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # an older Triton: `enable` keeps PDL off, the kernels never reach these
    gdc_launch_dependents = gdc_wait = None

__all__ = ["enable", "enabled", "launch", "wait_then_release"]

_on = False


def enable(on: bool, device: torch.device | None = None) -> bool:
    """Turn PDL on for the kernels launched from now on where `device` can (a CUDA device of
    compute capability 9.0 or more, a compiled Triton with grid dependency control); returns
    whether it is on."""
    global _on
    _on = bool(
        on and gdc_wait is not None and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
        and device is not None and device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)
    )
    return _on


def enabled() -> bool:
    return _on


def launch() -> dict[str, Any]:
    """The launch keywords of a taking part kernel: its `PDL` constexpr, and Triton's `launch_pdl`."""
    return {"PDL": True, "launch_pdl": True} if _on else {"PDL": False}


@triton.jit
def wait_then_release(PDL: tl.constexpr):
    if PDL:
        gdc_wait()  # the previous grid has completed and its memory is visible
        gdc_launch_dependents()  # the next kernel may launch (it waits for this one in turn)
