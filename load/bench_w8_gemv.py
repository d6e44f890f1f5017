"""The one-byte-weight linears at 1-16 rows on the Llama-3.1-8B shapes: every candidate that
worker/quant/w8.py's first-use timing tries (with --sweep, a wider set too), against the card's copy
rate and bf16's one-row kernel (genfleet_kernels/linear_one_row.py) and cuBLAS, all measured in this run.

Each call is timed as CUDA-graph replays over enough copies of the weight that they cannot sit in
L2 (a decoder's layers do not): load/bench_int_weight.per_call_us, the median of the replays after
the warm-up, over the copies (wall-clock medians on the CPU).
Every candidate is checked against the float32 torch reference of its numerics first (weight-only,
or W8A8 for the paths that quantize x). "% of copy" is the bytes a call must read (weight, scales,
x, the output) over the copy rate (read + write bytes per second of a 1 GiB device copy).

    python -m load.bench_w8_gemv                  # an H200: fp8, rows 1,2,4,8,16, the shortlist
    python -m load.bench_w8_gemv --kind int8 --rows 1,16
    python -m load.bench_w8_gemv --sweep --rows 1  # and the wider configs below
    TRITON_INTERPRET=1 python -m load.bench_w8_gemv --tiny   # the CPU: small shapes, end to end
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from genfleet_kernels import reference as ref
from load.bench_int_weight import L2_SAFE_BYTES, per_call_us
from load.bench_w8 import SHAPES

if TYPE_CHECKING:
    from worker.quant.w8 import W8Linear

# `--tiny`: the same four roles at sizes Triton's CPU interpreter gets through (K, N).
TINY = {"qkv": (128, 96), "o": (128, 64), "gate_up": (128, 192), "down": (256, 64)}
# --sweep, beside the shortlist: w8_gemv (block_n, block_k, warps, stages, split_k, bits) and
# w8a8_gemv (block_n, block_k, split_k, warps, stages).
SWEEP_GEMV = tuple((bn, bk, w, s, split, bits) for bn, bk, w, s in ((16, 2048, 8, 2), (32, 1024, 8, 2), (8, 4096, 8, 2),
                                                                  (16, 1024, 8, 3), (4, 2048, 4, 3))
                   for split in (1, 2, 4) for bits in (False, True))
SWEEP_W8A8 = tuple((bn, bk, split, 4, stages) for bn, bk in ((64, 128), (128, 128), (64, 256), (128, 256))
                   for split in (1, 2, 4, 8) for stages in (3, 5))
Call = Callable[[], torch.Tensor]


def copy_rate(device: torch.device) -> float:
    """Bytes per second read plus written by a device copy (1 GiB on a GPU, 64 MiB on the CPU)."""
    src = torch.empty((1 << 29) if device.type == "cuda" else (1 << 25), dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 2 / (per_call_us(lambda _: dst.copy_(src), [None], device.type != "cuda") / 1e6)


def candidates(layers: list[W8Linear], x: torch.Tensor, sweep: bool) -> dict[str, tuple[list[Call], bool]]:
    """name -> (one call per weight copy, whether it quantizes x): W8Linear's own paths, and the sweep."""
    from genfleet_kernels.w8_gemv import gemv_name, w8_gemv
    from genfleet_kernels.w8a8_gemv import w8a8_gemv, w8a8_name
    from worker.quant.w8 import GEMV_ROWS

    per_copy = [layer._paths(x) for layer in layers]
    found = {name: ([paths[name] for paths in per_copy], "scaled_mm" in name or "w8a8" in name) for name in per_copy[0]}
    if sweep and x.shape[0] <= GEMV_ROWS:
        for c in SWEEP_GEMV:
            found.setdefault(gemv_name(c), ([lambda lay=lay, c=c: w8_gemv(x, lay.weight, lay.scale, None, c)
                                              for lay in layers], False))
        if layers[0].kind == "fp8":
            for c in SWEEP_W8A8:
                found.setdefault(w8a8_name(c), (
                    [lambda lay=lay, c=c: w8a8_gemv(x, lay.weight, lay.scale, None, c) for lay in layers], True))
    return found


def main(argv: list[str] | None = None) -> int:
    from genfleet_kernels.linear_one_row import linear_one_row
    from worker.ops import _ONE_ROW_CONFIGS
    from worker.quant.int8 import quantize_int8_rows
    from worker.quant.w8 import W8Linear

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("fp8", "int8"), default="fp8")
    parser.add_argument("--rows", default="", help="default 1,2,4,8,16 (--tiny: 1,2)")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--sweep", action="store_true", help="time the wider configs too")
    parser.add_argument("--tiny", action="store_true", help="small shapes and float32 x (Triton's CPU interpreter)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    rows_list = [int(r) for r in (args.rows or ("1,2" if args.tiny else "1,2,4,8,16")).split(",")]
    cpu = device.type != "cuda"

    def timed_us(calls: list[Call]) -> float:
        return per_call_us(lambda call: call(), calls, cpu)
    shapes = TINY if args.tiny else SHAPES
    safe = 0 if args.tiny else L2_SAFE_BYTES  # --tiny: two copies, no L2 to escape
    gen = torch.Generator().manual_seed(0)
    bandwidth = copy_rate(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (Triton interpreter)"
    print(f"{name}; copy {bandwidth / 1e12:.3f} TB/s (read + write); {args.kind}; x {dtype}", flush=True)
    summary = []
    for role in args.shapes.split(","):
        k, n = shapes[role]
        dense = (torch.randn(n, k, generator=gen) / k**0.5).to(device)
        weight, scale = ref.quantize_fp8_rows(dense) if args.kind == "fp8" else quantize_int8_rows(dense)
        scale = scale.reshape(-1)
        layers = [W8Linear(weight.clone(), scale, None, dtype, device) for _ in range(max(2, -(-safe // (n * k))))]
        dense_copies = [dense.to(dtype) for _ in range(max(2, -(-safe // (2 * n * k))))]
        del dense
        for rows in rows_list:
            x = torch.randn(rows, k, generator=gen).to(device, dtype)
            want = {False: ref.w8_linear(x.float(), weight, scale), True: ref.w8a8_linear(x.float(), weight, scale)}
            read = n * k + 4 * n + x.element_size() * rows * (k + n)
            floor = read / bandwidth * 1e6
            bf16 = {"cuBLAS": timed_us([lambda w=w: F.linear(x, w) for w in dense_copies])}  # noqa: B023
            if rows <= 16:
                for c in _ONE_ROW_CONFIGS:
                    bf16["linear_one_row %dx%d/w%d/s%d" % c] = timed_us(
                        [lambda w=w, c=c: linear_one_row(x, w, None, *c) for w in dense_copies])  # noqa: B023
            base_name, base = min(bf16.items(), key=lambda kv: kv[1])
            timed = []
            for label, (calls, quantizes_x) in candidates(layers, x, args.sweep).items():
                try:
                    got = calls[0]().float()
                    err = float((got - want[quantizes_x]).norm() / want[quantizes_x].norm())
                    if not err < 1e-2:  # NaN fails too
                        print(f"  {role} {rows} rows {label}: WRONG, relative error {err:.2e}", flush=True)
                        continue
                    timed.append((timed_us(calls), label))
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"  {role} {rows} rows {label}: failed {type(exc).__name__}: {str(exc)[:160]}", flush=True)
            timed.sort()
            for t, label in timed:
                print(f"  {role} {k}->{n} {rows} rows {label}: {t:.2f} µs, {floor / t:.0%} of copy, {base / t:.2f}x bf16",
                      flush=True)
            best_t, best = timed[0] if timed else (float("inf"), "none")
            summary.append((role, k, n, rows, floor, base, base_name, best_t, best))
    print("\n| shape (K -> N) | rows | at copy rate µs | bf16 best µs | w8 best µs | % of copy | x bf16 | w8 best | bf16 best |")
    print("|---|---|---|---|---|---|---|---|---|")
    for role, k, n, rows, floor, base, base_name, best_t, best in summary:
        print(f"| {role} {k} -> {n} | {rows} | {floor:.1f} | {base:.1f} | {best_t:.1f} | {floor / best_t:.0%} | "
              f"{base / best_t:.2f}x | {best} | {base_name} |")
    for rows in sorted({s[3] for s in summary}):
        layer = [s for s in summary if s[3] == rows]
        floor, base, best = (sum(s[i] for s in layer) for i in (4, 5, 7))
        print(f"one decoder layer's {len(layer)} linears, {rows} rows: w8 {best:.1f} µs = {floor / best:.0%} of copy, "
              f"{base / best:.2f}x bf16 ({base:.1f} µs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
