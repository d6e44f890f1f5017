"""One switch between kernel implementations: Triton on CUDA where a kernel exists, torch otherwise
(on the CPU, worker/cpu_ops.py's fused attention and KV store, the references for the rest).

Model code calls `ops.<name>(...)` only. `use_device(device)` is called once by the model runner.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from typing import Any

import torch

from genfleet_kernels import reference
from worker import cpu_linear, cpu_ops

__all__ = [
    "use_device", "linear", "one_row_choices", "gpu_milliseconds", "store_kv", "paged_decode_attention",
    "prefill_attention", "rms_norm", "rotary_embedding", "rotary_store_kv", "silu_and_mul", "gelu_tanh_and_mul",
    "fused_moe", "lora_add",
]

log = logging.getLogger("genfleet.worker.ops")

_NAMES = ("store_kv", "paged_decode_attention", "prefill_attention", "rms_norm", "rotary_embedding", "silu_and_mul",
          "gelu_tanh_and_mul", "fused_moe", "lora_add")
# The ops worker/cpu_ops.py runs in C++ when its library is built (prefill attention stays torch's).
_NATIVE = ("store_kv", "paged_decode_attention", "rms_norm", "rotary_embedding", "silu_and_mul")
# Launchers that live in another kernel's module (a variant of its kernel).
_MODULE_OF = {"gelu_tanh_and_mul": "silu_and_mul", "lora_add": "lora"}
_impl: dict[str, Callable[..., Any]] = {name: getattr(reference, name) for name in _NAMES}
# Rotary and the KV store in one launch (genfleet_kernels/rotary_store_kv.py) on CUDA; None: the two ops above.
_rotary_store_kv: Callable[..., torch.Tensor] | None = None
# Linears of one row or a few (batch-1 decode, batch-1 verification) on CUDA: genfleet_kernels/linear_one_row.py
# where it measured faster than torch for that weight shape and row count (see `linear`); None = torch
# everywhere.
_one_row: Callable[..., torch.Tensor] | None = None
# (block_n, block_k, warps, stages) tried: the fastest of load/sweep_one_row.py's settings on an H200,
# and the small tiles that suit narrow weights (SmolLM2's). The sweep cycles weights out of L2; inside a
# decode graph cuBLAS measured faster for most 8B shapes, and forcing these was slower (docs/perf.md).
_ONE_ROW_CONFIGS = ((4, 2048, 4, 3), (4, 1024, 2, 3), (4, 512, 4, 3), (8, 1024, 8, 3))
_max_rows = 0  # genfleet_kernels/linear_one_row.MAX_ROWS once it is loaded
# (N, K, dtype, has bias, graphed, rows) -> the config chosen, None for torch
_one_row_choice: dict[tuple[int, int, torch.dtype, bool, bool, int], tuple[int, int, int, int] | None] = {}


def _enable_pdl(on: bool, device: torch.device) -> bool:
    """genfleet_kernels/pdl.py's switch, imported only where Triton may run (the CPU image has no
    Triton); an earlier CUDA pick's PDL is switched off again."""
    if device.type != "cuda" and "genfleet_kernels.pdl" not in sys.modules:
        return False
    try:
        from genfleet_kernels import pdl
    except ImportError:  # no Triton: nothing launches with PDL
        return False
    return pdl.enable(on, device)


def use_device(device: torch.device, cpu_kernels: bool = False, fused_rotary_store: bool = True,
               pdl: bool = False) -> dict[str, str]:
    """Pick each op's implementation for `device`; returns {op: "triton" | "torch" | "torch (cpu_ops)" |
    "c++ (cpu_ops)"}. `cpu_kernels`: on the CPU, worker/cpu_native.cpp's fused ops where they build.
    `fused_rotary_store`: on CUDA, `rotary_store_kv` is one kernel (else rotary, then the store).
    `pdl`: the Triton kernels that take part launch with programmatic dependent launch (genfleet_kernels/pdl.py)."""
    chosen = {"programmatic dependent launch": "on" if _enable_pdl(pdl, device) else "off"}
    triton_ops: dict[str, Callable[..., Any]] = {}
    cpu = {name: getattr(cpu_ops, name) for name in cpu_ops.__all__} if device.type == "cpu" else {}
    native = cpu_ops.use_native(cpu_kernels and device.type == "cpu")
    if device.type == "cuda":
        for name in _NAMES:
            try:  # each launcher loads on first use; a missing one falls back alone
                triton_ops[name] = _launcher(name)
            except Exception as exc:  # a broken Triton install must not stop the worker
                log.warning("Triton %s unavailable (%s); using the torch reference", name, exc)
    for name in _NAMES:
        _impl[name] = triton_ops.get(name) or cpu.get(name) or getattr(reference, name)
        in_cpu = "c++ (cpu_ops)" if native and name in _NATIVE else "torch (cpu_ops)"
        chosen[name] = "triton" if name in triton_ops else in_cpu if name in cpu else "torch"
    global _one_row, _max_rows, _rotary_store_kv
    _rotary_store_kv = None
    if device.type == "cuda" and fused_rotary_store:
        try:
            _rotary_store_kv = _launcher("rotary_store_kv")
        except Exception as exc:
            log.warning("Triton rotary_store_kv unavailable (%s); rotary and store_kv run apart", exc)
    chosen["rotary_store_kv"] = "triton" if _rotary_store_kv is not None else "rotary_embedding + store_kv"
    _one_row = None
    if device.type == "cuda":
        try:
            _one_row = _launcher("linear_one_row")
            _max_rows = importlib.import_module("genfleet_kernels.linear_one_row").MAX_ROWS
        except Exception as exc:
            log.warning("Triton linear_one_row unavailable (%s); using torch", exc)
    chosen["linear (one row)"] = "triton" if _one_row is not None else "torch"
    return chosen


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, graphed: bool = False) -> torch.Tensor:
    """x @ weight.T + bias. One row on CUDA, or a few (up to genfleet_kernels/linear_one_row.MAX_ROWS: a
    verification step's last token and drafts): the faster of torch and the Triton GEMV configs,
    timed once per weight shape and row count on first use (outside CUDA graph capture; the graph
    warm-ups time the row counts the graphs replay).

    `graphed`: the call site runs inside decode CUDA graphs, so only GPU time counts and the
    candidates are timed by graph replay; otherwise 20 calls run back to back between two events,
    so where launching costs the host more than the kernel costs the device (Triton's launcher
    is heavier than torch's), that cost counts too.
    """
    if not x.is_cuda:  # bfloat16 weights packed at load: worker/cpu_linear.py
        return cpu_linear.linear(x, weight, bias)
    if _one_row is None or not 1 <= x.shape[0] <= _max_rows:
        return torch.nn.functional.linear(x, weight, bias)
    key = (weight.shape[0], weight.shape[1], weight.dtype, bias is not None, graphed, x.shape[0])
    if key not in _one_row_choice:
        if torch.cuda.is_current_stream_capturing():
            return torch.nn.functional.linear(x, weight, bias)
        _one_row_choice[key] = _fastest_one_row(x, weight, bias, graphed)
        log.info("linear %dx%d at %d row(s)%s: %s", key[1], key[0], key[5], " (graphed)" if graphed else "",
                 _one_row_choice[key] or "torch")
    config = _one_row_choice[key]
    if config is None:
        return torch.nn.functional.linear(x, weight, bias)
    return _one_row(x, weight, bias, *config)


def one_row_choices() -> dict[str, str]:
    """What `linear` picked per weight shape so far: "KxN" (one row) or "KxN at M rows" -> "torch" or
    the GEMV config."""
    return {
        f"{k[1]}x{k[0]}{f' at {k[5]} rows' if k[5] > 1 else ''}{' graphed' if k[4] else ''}":
            "torch" if v is None else "triton %dx%d/w%d/s%d" % v
        for k, v in _one_row_choice.items()
    }


def _fastest_one_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     graphed: bool) -> tuple[int, int, int, int] | None:
    assert _one_row is not None
    one_row = _one_row
    best: tuple[int, int, int, int] | None = None
    best_ms = gpu_milliseconds(lambda: torch.nn.functional.linear(x, weight, bias), graphed)
    for config in _ONE_ROW_CONFIGS:
        took = gpu_milliseconds(lambda: one_row(x, weight, bias, *config), graphed)
        if took < 0.97 * best_ms:  # a clear win only
            best, best_ms = config, took
    return best


def gpu_milliseconds(fn: Callable[[], Any], graphed: bool, calls: int = 20, rounds: int = 3) -> float:
    """GPU time of `calls` back-to-back calls of fn: replayed from one CUDA graph when `graphed`
    (device time alone), else launched eagerly between two events (host launch cost counts). The
    median of `rounds` timings, after one untimed round: a graph's first replay also uploads it,
    which can cost as much as the calls themselves and would even out the candidates."""
    for _ in range(3):  # compiles, and settles the allocator outside any capture
        fn()
    torch.cuda.synchronize()
    graph = None
    if graphed:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()

    def run() -> None:
        if graph is not None:
            graph.replay()
        else:
            for _ in range(calls):
                fn()

    run()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(float(start.elapsed_time(end)))
    return sorted(times)[len(times) // 2]


def store_kv(*args: Any, **kwargs: Any) -> Any:
    return _impl["store_kv"](*args, **kwargs)


def paged_decode_attention(*args: Any, **kwargs: Any) -> Any:
    return _impl["paged_decode_attention"](*args, **kwargs)


def prefill_attention(*args: Any, **kwargs: Any) -> Any:
    return _impl["prefill_attention"](*args, **kwargs)


def rms_norm(*args: Any, **kwargs: Any) -> Any:
    return _impl["rms_norm"](*args, **kwargs)


def rotary_embedding(*args: Any, **kwargs: Any) -> Any:
    return _impl["rotary_embedding"](*args, **kwargs)


def rotary_store_kv(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
                    v_scale: torch.Tensor | None = None, is_neox: bool = True) -> torch.Tensor:
    """q and k rotated, k and v stored into their cache slots; returns the rotated q (T, H, D).
    One kernel on CUDA; elsewhere (or switched off) the two ops in turn, as genfleet_kernels/reference_fused.py."""
    if _rotary_store_kv is not None and q.is_cuda:
        return _rotary_store_kv(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping, k_scale, v_scale,
                                is_neox)
    q, k = rotary_embedding(positions, q, k, cos_sin_cache, is_neox)
    store_kv(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    return q  # type: ignore[no-any-return]


def silu_and_mul(*args: Any, **kwargs: Any) -> Any:
    return _impl["silu_and_mul"](*args, **kwargs)


def gelu_tanh_and_mul(*args: Any, **kwargs: Any) -> Any:
    return _impl["gelu_tanh_and_mul"](*args, **kwargs)


def fused_moe(*args: Any, **kwargs: Any) -> Any:
    return _impl["fused_moe"](*args, **kwargs)


def lora_add(*args: Any, **kwargs: Any) -> Any:
    return _impl["lora_add"](*args, **kwargs)


def _launcher(name: str) -> Callable[..., Any]:
    # genfleet_kernels/<name>.py defines the launcher <name> (or the module _MODULE_OF names).
    return getattr(importlib.import_module(f"genfleet_kernels.{_MODULE_OF.get(name, name)}"), name)  # type: ignore[no-any-return]
