"""Split-K in one launch: partial sums in a float32 workspace, the last program of a tile adds them.

A product whose K is split over SPLIT_K programs per output tile would otherwise need three
launches (zero the output, atomically add into it, cast it): at one row of an 8B model's linears
a launch costs about as much as the kernel's own work. Here each program stores its partial tile
to `workspace[pid_k]`, bumps the tile's counter, and the program that sees SPLIT_K - 1 (the last
to finish) sums the partials in a fixed order (so the result does not depend on who finished
first), writes the output in its dtype and puts the counter back to 0 for the next launch.

The counters live in one zeroed buffer per device (`counters`), reused by every launch: launches
that use it must not run concurrently (the engine runs its model on one stream).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["finish_tile", "counters", "workspace"]

_MAX_TILES = 1 << 16
_counters: dict[torch.device, torch.Tensor] = {}


@triton.jit
def finish_tile(acc, out_ptrs, mask, idx, ws_ptr, cnt_ptr, tile, pid_k, numel, SPLIT_K: tl.constexpr):
    # acc: this program's float32 partial; idx: each element's flat index in the output (numel of them).
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptrs.dtype.element_ty), mask=mask)
    else:
        tl.store(ws_ptr + pid_k * numel + idx, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial is written before the counter moves
        count = tl.atomic_add(cnt_ptr + tile, 1)  # acq_rel: the partials before it are visible after it
        if count == SPLIT_K - 1:
            total = tl.load(ws_ptr + idx, mask=mask, other=0.0, cache_modifier=".cg")
            for i in range(1, SPLIT_K):
                total += tl.load(ws_ptr + i * numel + idx, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(out_ptrs, total.to(out_ptrs.dtype.element_ty), mask=mask)
            tl.atomic_xchg(cnt_ptr + tile, 0)


def counters(device: torch.device, tiles: int) -> torch.Tensor:
    """The device's zeroed tile counters (allocated once: CUDA graphs keep its address)."""
    assert tiles <= _MAX_TILES, f"{tiles} output tiles; at most {_MAX_TILES}"
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    found = _counters.get(device)
    if found is None:  # first use: the layers ask at load, outside any graph capture
        found = _counters[device] = torch.zeros(_MAX_TILES, dtype=torch.int32, device=device)
    return found


def workspace(split_k: int, numel: int, device: torch.device) -> torch.Tensor:
    """Room for the partials (uninitialized: every program writes its own before the sum)."""
    return torch.empty(split_k if split_k > 1 else 1, numel if split_k > 1 else 1, dtype=torch.float32, device=device)
