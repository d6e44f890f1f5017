"""`python -m load.bench_int_weight --compare`: the int4 one-row GEMV with x's pairs made by a launch
of their own ("old") against made in the kernel ("new"), on the Llama-3.1-8B linear shapes.

AWQ layout (random integers, zero points and scales), group 128 by default. Per shape and row
count: the fastest candidate of each side of worker/quant/int_kernels.py's shortlist, every one
checked against the float32 reference first (relative error of the whole output under 1e-2), bf16
`F.linear` and bf16 `linear_one_row` (the fastest of the configs worker/ops.py's `linear` tries)
on the same weights (dequantized), all timed by the caller's `per_call_us` over enough weight
copies that they cannot sit in L2. "% copy" is the bytes a call
reads over the copy rate measured in the same run (on the CPU: a 64 MiB tensor copy).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

__all__ = ["compare"]


def compare(shapes: tuple[tuple[str, int, int], ...], group_size: int, rows_csv: str, names: list[str],
            per_call_us: Callable, l2_safe_bytes: int, pdl: bool = False) -> int:  # type: ignore[type-arg]
    import torch
    import torch.nn.functional as F

    from genfleet_kernels import reference
    from genfleet_kernels.linear_one_row import MAX_ROWS, linear_one_row
    from worker.ops import _ONE_ROW_CONFIGS as ONE_ROW_CONFIGS  # what the engine's bf16 linears pick among
    from worker.quant import int_kernels
    from worker.quant.int_weight import IntWeightLinear, IntWeights

    cpu = not torch.cuda.is_available()
    device = torch.device("cpu" if cpu else "cuda")
    copy_rate = _copy_rate(device)
    from genfleet_kernels import pdl as pdl_switch

    pdl_on = pdl_switch.enable(pdl, device)
    print(f"device {'cpu' if cpu else torch.cuda.get_device_name()}: copy {copy_rate / 1e12:.3f} TB/s, "
          f"int4 AWQ layout group {group_size}, programmatic dependent launch {'on' if pdl_on else 'off'}")
    old = tuple(c for c in int_kernels.F16X2 if not (len(c) > 6 and c[6]))
    new = tuple(c for c in int_kernels.F16X2 if len(c) > 6 and c[6])
    gen = torch.Generator(device).manual_seed(0)
    table = []
    for name, k, n in shapes:
        if name not in names:
            continue
        weights = IntWeights.random(n, k, group_size, 4, device)
        weights.zeros = torch.randint(0, 16, weights.zeros.shape, device=device, generator=gen, dtype=torch.int32)
        weights.scales = (weights.scales.float() * (0.5 + torch.rand(weights.scales.shape, device=device,
                                                                     generator=gen))).half()
        layer = IntWeightLinear(weights, None, torch.bfloat16, device)
        copies = max(2, -(-l2_safe_bytes // layer.packed_bytes())) if not cpu else 1
        packed = [SimpleNamespace(qweight=layer.qweight.clone(), scales=layer.scales.clone(), zeros=layer.zeros.clone(),
                                  bias=None, group_size=layer.group_size, bits=layer.bits) for _ in range(copies)]
        dense = reference.dequantize_int_weight(layer.qweight, layer.scales, layer.zeros, group_size, 4)  # (N, K)
        dense_copies = [dense.to(torch.bfloat16) for _ in range(max(2, -(-l2_safe_bytes // (2 * n * k))) if not cpu
                                                                else 1)]
        for rows in (int(r) for r in rows_csv.split(",")):
            x = torch.randn(rows, k, dtype=torch.bfloat16, device=device, generator=gen)  # (rows, K)
            want = F.linear(x.float(), dense)  # (rows, N)
            read = layer.packed_bytes() + x.numel() * 2 + rows * n * 2
            bf16_us = per_call_us(lambda w: F.linear(x, w), dense_copies, cpu)  # noqa: B023
            one_row_us = min((per_call_us(lambda w, c=c: linear_one_row(x, w, None, *c), dense_copies, cpu)  # noqa: B023
                              for c in ONE_ROW_CONFIGS), default=float("nan")) if rows <= MAX_ROWS else float("nan")
            bucket = int_kernels.bucket_of(rows)
            if rows == 1:
                sides = [_fastest([c for c in int_kernels.candidates(layer, bucket, (), (), f16x2) if "f16x2" in c[0]],
                                  x, packed, want, per_call_us, cpu) for f16x2 in (old, new)]
            else:  # the same GEMM shortlist on both sides: timed once
                sides = [_fastest(int_kernels.candidates(layer, bucket, (), int_kernels.GEMM, ()), x, packed, want,
                                  per_call_us, cpu)] * 2
            (old_us, old_label), (new_us, new_label) = sides
            print(f"{name} {k}->{n} rows {rows}: bf16 {bf16_us:.2f} µs, linear_one_row {one_row_us:.2f} µs, "
                  f"old {old_us:.2f} µs ({old_label}), new {new_us:.2f} µs ({new_label})", flush=True)
            table.append((name, k, n, rows, bf16_us, one_row_us, old_us, new_us, read, new_label))
    print("\n| shape (K -> N) | rows | bf16 µs | linear_one_row µs | int4 old µs | int4 new µs | new / old | "
          "new % copy | new x bf16 | new x linear_one_row | new picked |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, k, n, rows, bf16_us, one_row_us, old_us, new_us, read, label in table:
        print(f"| {name} {k} -> {n} | {rows} | {bf16_us:.2f} | {one_row_us:.2f} | {old_us:.2f} | {new_us:.2f} | "
              f"{old_us / new_us:.2f}x | {read / new_us / 1e6 / copy_rate * 1e12:.0%} | {bf16_us / new_us:.2f}x | "
              f"{one_row_us / new_us:.2f}x | {label} |")
    for rows in sorted({r[3] for r in table}):
        sel = [r for r in table if r[3] == rows]
        if {r[0] for r in sel} >= {"qkv", "o", "gate_up", "down"}:  # a layer's four linears
            print(f"rows {rows}, the four linears of a layer: bf16 {sum(r[4] for r in sel):.1f} µs, int4 old "
                  f"{sum(r[6] for r in sel):.1f}, new {sum(r[7] for r in sel):.1f} µs, new at "
                  f"{sum(r[8] for r in sel) / sum(r[7] for r in sel) / 1e6 / copy_rate * 1e12:.0%} of the copy rate")
    return 0


def _fastest(found, x, packed, want, per_call_us, cpu: bool) -> tuple[float, str]:  # type: ignore[no-untyped-def]
    best = (float("inf"), "none")
    for label, impl in found:
        try:
            got = impl(x, packed[0]).float()
            err = float((got - want).norm() / want.norm())
            if not err < 1e-2:  # NaN fails too
                print(f"    {label}: WRONG, relative error {err:.2e}")
                continue
            took = per_call_us(lambda lay: impl(x, lay), packed, cpu)  # noqa: B023
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"    {label}: failed {type(exc).__name__}: {str(exc)[:120]}")
            continue
        best = min(best, (took, label))
    return best


def _copy_rate(device) -> float:  # type: ignore[no-untyped-def]
    import torch

    if device.type == "cuda":
        from load.roofline import measure_card

        return measure_card().copy_bytes_per_s
    import time

    src = torch.empty(1 << 25, dtype=torch.float16)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    return 2 * src.numel() * 2 * 5 / (time.perf_counter() - start)
