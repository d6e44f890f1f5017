"""Builds and loads worker/cpu_native.cpp, the CPU decode layer's fused C++ ops, once per machine.

The build (torch's C++ extension loader: g++ and Python's headers) takes ~40 s on a 2-core
machine and is cached on disk under torch's extension directory ($TORCH_EXTENSIONS_DIR, else
~/.cache/torch_extensions), in a folder named after a digest of the source, the compile flags,
the CPU's instruction-set flags and the torch version: a worker start after the first loads the
cached library in well under a second, and a changed source, CPU or torch builds afresh (a
library built with -march=native for one CPU would crash on another). Concurrent first starts
wait on the loader's lock rather than build twice. No compiler, or a failed build: `load()`
logs why and returns False, and worker/cpu_ops.py keeps its torch ops.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

import torch

__all__ = ["load", "ops"]

log = logging.getLogger("genfleet.worker.cpu_native")

_SOURCE = Path(__file__).with_name("cpu_native.cpp")
_CFLAGS = ("-O3", "-march=native", "-fopenmp")  # -fopenmp: at::parallel_for's regions and the simd loops
_lock = threading.Lock()
_state: dict[str, bool] = {}  # "loaded": the outcome of the one attempt per process


def load() -> bool:
    """Build (or find cached) and load the library; True when torch.ops.genfleet_cpu is usable."""
    with _lock:
        if "loaded" not in _state:
            _state["loaded"] = _build()
        return _state["loaded"]


def ops():  # type: ignore[no-untyped-def]
    """The loaded ops' namespace (call `load()` first)."""
    return torch.ops.genfleet_cpu


def _build() -> bool:
    if hasattr(torch.ops, "genfleet_cpu") and hasattr(torch.ops.genfleet_cpu, "paged_decode_attention"):
        return True  # loaded already (another loader in this process)
    try:
        from torch.utils import cpp_extension

        source = _SOURCE.read_text()
        digest = hashlib.sha256(
            "\n".join([source, " ".join(_CFLAGS), torch.__version__, _cpu_flags()]).encode()
        ).hexdigest()[:16]
        started = time.monotonic()
        cpp_extension.load_inline(
            name=f"genfleet_cpu_{digest}", cpp_sources=[source], extra_cflags=list(_CFLAGS),
            extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False,
        )
    except Exception as exc:  # no compiler, no headers, a build error: the torch ops stay
        log.warning("CPU fused ops unavailable (%s: %s); using torch's ops", type(exc).__name__, str(exc)[:500])
        return False
    log.info("CPU fused ops loaded in %.1fs (built once per source, CPU and torch; cached after)",
             time.monotonic() - started)
    return True


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: the build folder is keyed by the rest
        return ""
    return next((line for line in text.splitlines() if line.startswith("flags")), "")
