"""Integer weight-only kernels on the Llama-3.1-8B linear shapes, beside bf16 cuBLAS, on one GPU.

For each shape and row count: every candidate kernel of worker/quant/int_kernels.py (with --sweep,
the wider config set below), checked against the float32 torch reference on random integers,
zero points and scales (relative error of the whole output), then timed as CUDA-graph replays
(`triton.testing.do_bench_cudagraph`, median) over enough copies of the weight that they cannot
sit in L2 (as a decoder's layers do not); bf16 `F.linear` is timed the same way. "% of bandwidth"
is the bytes a call must read (packed weight, scales, zeros, x, the output) over the card's
measured copy rate.

    python -m load.bench_int_weight                   # group 128, rows 1, 16, 64: the shortlist
    python -m load.bench_int_weight --sweep --log $OUT/int4.log   # the wide sweep, every line logged
    python -m load.bench_int_weight --group-size 64 --rows 1,64
    python -m load.bench_int_weight --compare         # x_pairs builds against fused ones, rows 1 and 16
    python -m load.bench_int_weight --compare --pdl   # the same with programmatic dependent launch on
    TRITON_INTERPRET=1 python -m load.bench_int_weight --compare --tiny   # the same on the CPU, tiny shapes

--compare: per shape and row count, the fastest x_pairs build of the f16x2 shortlist ("old": the
launch before every call) and the fastest fused one ("new": x's pairs made in the kernel), each
call checked against the reference first; beside them bf16 `F.linear` and bf16 `linear_one_row`
(genfleet_kernels/linear_one_row.py) on the same weights, all as graph replays (wall-clock medians on the
CPU). Above one row both sides are the GEMM shortlist (no fused variant there yet).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from types import SimpleNamespace

SHAPES = (("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672), ("down", 14336, 4096))
TINY = (("qkv", 2048, 48), ("o", 2048, 32), ("gate_up", 2048, 64), ("down", 4096, 32))  # --tiny: for the interpreter
# --sweep: (block_n, block_w, split_k, warps, stages, loads) and (block_m, block_n, block_k, split_k, swap, ptx, warps,
# stages).
SWEEP_GEMV = ((8, 128, 1, 4, 3, True), (16, 128, 1, 8, 3, True)) + tuple(
    (bn, bw, sk, warps, 3, loads) for bn, bw, warps in ((8, 128, 4), (16, 128, 4), (8, 256, 8), (16, 64, 2), (32, 64, 4),
                                                        (32, 128, 8))
    for sk in (1, 2) for loads in (False, "planes"))
SWEEP_GEMM = (
    (16, 64, 128, 2, True, True, 4, 4), (16, 64, 128, 4, True, True, 4, 4), (16, 64, 128, 8, True, True, 4, 4),
    (16, 64, 128, 4, True, True, 4, 5), (16, 128, 128, 2, True, True, 4, 4), (16, 128, 128, 4, True, True, 4, 4),
    (16, 128, 128, 4, True, True, 4, 5), (16, 256, 128, 2, True, True, 8, 3), (16, 256, 128, 4, True, True, 8, 3),
    (16, 64, 64, 4, True, True, 4, 6), (16, 64, 64, 8, True, True, 4, 6),
    (64, 64, 128, 2, True, True, 4, 3), (64, 64, 128, 4, True, True, 4, 3), (64, 64, 128, 8, True, True, 4, 3),
    (64, 64, 128, 4, True, True, 4, 4), (64, 32, 128, 4, False, True, 4, 4), (64, 32, 128, 8, False, True, 4, 4),
    (64, 64, 128, 4, False, True, 4, 4), (64, 64, 128, 8, False, True, 4, 4), (32, 64, 128, 4, True, True, 4, 4))
# --f16x2 sweep: (block_n, block_w, split_k, warps, stages, fold) of genfleet_kernels/int_weight_gemv_f16x2.py.
SWEEP_F16X2 = tuple((bn, bw, sk, warps, 3, True) for bn, bw, sk, warps in (
    (8, 128, 1, 4), (16, 64, 1, 2), (16, 128, 1, 4), (16, 256, 1, 4), (16, 256, 1, 8), (32, 64, 1, 4), (32, 128, 1, 4),
    (32, 128, 1, 8), (32, 256, 1, 8), (64, 128, 1, 8), (8, 256, 2, 4), (16, 128, 2, 4), (32, 128, 2, 4),
    (16, 256, 2, 8), (16, 128, 4, 4))) + ((16, 128, 1, 4, 3, False), (32, 128, 1, 4, 3, False), (16, 128, 2, 4, 3, False),
                                         (32, 128, 1, 4, 2, True), (32, 128, 1, 4, 4, True))
L2_SAFE_BYTES = 256 << 20  # the weight copies a timed call cycles through: several times the L2


def per_call_us(fn, copies: list, cpu: bool = False) -> float:  # type: ignore[no-untyped-def, type-arg]
    """GPU µs of one fn(copy), from CUDA-graph replays of fn over every copy in turn (median); cpu:
    the wall-clock median of 3 rounds after one (the interpreter has no graphs)."""
    import triton.testing

    def all_copies() -> None:
        for c in copies:
            fn(c)

    all_copies()
    if cpu:
        took = []
        for _ in range(3):
            start = time.perf_counter()
            all_copies()
            took.append(time.perf_counter() - start)
        return statistics.median(took) * 1e6 / len(copies)
    return float(triton.testing.do_bench_cudagraph(all_copies, rep=5, return_mode="median")) * 1e3 / len(copies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--rows", default="1,16,64")
    parser.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    parser.add_argument("--sweep", action="store_true", help="time the wide config set, not the shortlist")
    parser.add_argument("--f16x2", choices=("shortlist", "sweep", "none"), default="shortlist",
                        help="which packed-pair GEMV configs to time beside the others (one row)")
    parser.add_argument("--into", default="", help="comma list of acc, zero, tile: time every GEMM config in each "
                        "of these modes (where a tile's zero point and scale go, genfleet_kernels/int_weight_gemm.py)")
    parser.add_argument("--log", help="write every candidate's line here too")
    parser.add_argument("--compare", action="store_true", help="x_pairs against fused builds (rows 1,16 unless "
                        "--rows is given), beside bf16 F.linear and linear_one_row")
    parser.add_argument("--tiny", action="store_true", help="with --compare: tiny shapes, on the CPU when no GPU")
    parser.add_argument("--pdl", action="store_true", help="with --compare: programmatic dependent launch on for the "
                        "Triton kernels that take part (genfleet_kernels/pdl.py; the f16x2 builds and x_pairs among them)")
    args = parser.parse_args(argv)
    if args.compare:
        from load.bench_int_weight_compare import compare

        return compare(SHAPES if not args.tiny else TINY, args.group_size,
                       args.rows if "--rows" in (argv if argv is not None else sys.argv) else "1,16",
                       args.shapes.split(","), per_call_us, L2_SAFE_BYTES, args.pdl)
    import torch
    import torch.nn.functional as F
    from genfleet_kernels import reference
    from load.roofline import measure_card
    from worker.quant import int_kernels
    from worker.quant.int_weight import IntWeightLinear, IntWeights

    card = measure_card()
    bandwidth = card.copy_bytes_per_s  # as load/bench_gpu.py's roofline: the copy rate stands for the read rate
    print(f"card {card.name}: copy {bandwidth / 1e12:.2f} TB/s, int{args.bits} group {args.group_size}")
    log = open(args.log, "w") if args.log else None  # noqa: SIM115 - closed at the end
    device = torch.device("cuda")
    gen = torch.Generator(device).manual_seed(0)
    gemv, gemm = (SWEEP_GEMV, SWEEP_GEMM) if args.sweep else (int_kernels.GEMV, int_kernels.GEMM)
    f16x2 = {"shortlist": int_kernels.F16X2, "sweep": SWEEP_F16X2, "none": ()}[args.f16x2]
    if args.into:
        gemm = tuple(c[:8] + (into,) for c in gemm for into in args.into.split(","))

    table = []
    for name, k, n in SHAPES:
        if name not in args.shapes.split(","):
            continue
        weights = IntWeights.random(n, k, args.group_size, args.bits, device)
        weights.zeros = torch.randint(0, 1 << args.bits, weights.zeros.shape, device=device, generator=gen,
                                      dtype=torch.int32)
        weights.scales = (weights.scales.float() * (0.5 + torch.rand(weights.scales.shape, device=device,
                                                                     generator=gen))).half()
        layer = IntWeightLinear(weights, None, torch.bfloat16, device)
        packed = [SimpleNamespace(qweight=layer.qweight.clone(), scales=layer.scales.clone(), zeros=layer.zeros.clone(),
                                  bias=None, group_size=layer.group_size, bits=layer.bits)
                  for _ in range(max(2, -(-L2_SAFE_BYTES // layer.packed_bytes())))]
        dense = reference.dequantize_int_weight(layer.qweight, layer.scales, layer.zeros, args.group_size, args.bits)
        dense_copies = [dense.to(torch.bfloat16) for _ in range(max(2, -(-L2_SAFE_BYTES // (2 * n * k))))]
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, k, dtype=torch.bfloat16, device=device, generator=gen)
            want = F.linear(x.float(), dense)
            bf16_us = per_call_us(lambda w: F.linear(x, w), dense_copies)  # noqa: B023
            read = layer.packed_bytes() + x.numel() * 2 + rows * n * 2
            results = []
            if rows == 1 and f16x2 and k % 16 == 0:  # the x_pairs launch that every f16x2 call makes, alone
                from genfleet_kernels.int_weight_gemv_f16x2 import x_pairs
                prep_us = per_call_us(lambda _: x_pairs(x, True), packed[:4])  # noqa: B023
                print(f"{name}: x_pairs alone {prep_us:.2f} µs")
            for label, impl in int_kernels.candidates(layer, int_kernels.bucket_of(rows), gemv, gemm, f16x2):
                try:
                    got = impl(x, packed[0]).float()
                    err = float((got - want).norm() / want.norm())
                    if not err < 1e-2:  # NaN fails too
                        results.append((float("inf"), label, f"WRONG: relative error {err:.2e}"))
                        continue
                    t = per_call_us(lambda lay: impl(x, lay), packed)  # noqa: B023
                except Exception as exc:  # noqa: BLE001 - report and go on
                    results.append((float("inf"), label, f"failed {type(exc).__name__}: {str(exc)[:120]}"))
                    continue
                results.append((t, label, f"{t:.2f} µs, {read / t / 1e6 / bandwidth * 1e12:.0%} of bandwidth, "
                                          f"{bf16_us / t:.2f}x bf16, err {err:.1e}"))
            results.sort(key=lambda r: r[0])
            head = f"{name} {k}->{n} rows {rows}: bf16 {bf16_us:.2f} µs ({2 * n * k / bf16_us / 1e6 / bandwidth * 1e12:.0%})"
            lines = [head] + [f"    {label}: {text}" for _, label, text in results]
            print("\n".join(lines[:4] + [line for line in lines[4:] if "WRONG" in line or "failed" in line]))
            if log:
                log.write("\n".join(lines) + "\n")
                log.flush()
            best = results[0] if results else (float("inf"), "none", "")
            other = next((r[0] for r in results if "f16x2" not in r[1]), float("inf"))  # the fastest older kernel
            table.append((name, k, n, rows, bf16_us, best[0], read / best[0] / 1e6 / bandwidth * 1e12, best[1], other))
            sys.stdout.flush()
    print(f"\n| shape (K -> N) | rows | bf16 µs | int{args.bits} µs | x bf16 | % of bandwidth | picked | best non-f16x2 µs |")
    print("|---|---|---|---|---|---|---|---|")
    for name, k, n, rows, bf16_us, t, frac, label, other in table:
        print(f"| {name} {k} -> {n} | {rows} | {bf16_us:.1f} | {t:.1f} | {bf16_us / t:.2f}x | {frac:.0%} | {label} | "
              f"{other:.1f} |")
    if log:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
