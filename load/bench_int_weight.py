"""Integer weight-only kernels on the Llama-3.1-8B linear shapes, beside bf16 cuBLAS, on one GPU.

For each shape and row count: every candidate kernel of worker/quant/int_kernels.py, graph-replayed
GPU µs (CUDA-graph medians by triton.testing), the bf16 `F.linear` of the same shape, and the
bytes each reads per call over the card's measured copy bandwidth.

    python -m load.bench_int_weight                 # group 128, rows 1, 16, 64, 256
    python -m load.bench_int_weight --group-size 64 --rows 1,64
"""

from __future__ import annotations

import argparse
import sys

SHAPES = (("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672), ("down", 14336, 4096))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--rows", default="1,16,64,256")
    args = parser.parse_args(argv)
    import torch
    import triton.testing

    from kernels import reference
    from load.bench_gpu import measure_card
    from worker.quant import int_kernels
    from worker.quant.int_weight import IntWeightLinear, IntWeights

    card = measure_card()
    bandwidth = card.copy_bytes_per_s  # as load/bench_gpu.py's roofline: the copy rate stands for the read rate
    print(f"card {card.name}: copy {bandwidth / 1e12:.2f} TB/s")
    device = torch.device("cuda")

    def us(fn):  # type: ignore[no-untyped-def]
        fn()
        return float(triton.testing.do_bench_cudagraph(fn, rep=50)) * 1e3

    for name, k, n in SHAPES:
        layer = IntWeightLinear(IntWeights.random(n, k, args.group_size, args.bits, device), None, torch.bfloat16, device)
        dense = reference.dequantize_int_weight(layer.qweight, layer.scales, layer.zeros, args.group_size, args.bits)
        dense = dense.to(torch.bfloat16)
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, k, dtype=torch.bfloat16, device=device)
            want = torch.nn.functional.linear(x, dense)
            bf16_us = us(lambda: torch.nn.functional.linear(x, dense))  # noqa: B023
            read = layer.packed_bytes() + x.numel() * 2 + rows * n * 2
            bucket = int_kernels.bucket_of(rows)
            cells = []
            best = (float("inf"), "")
            for label, impl in int_kernels.candidates(layer, bucket):
                try:
                    got = impl(x, layer)
                    err = float((got.float() - want.float()).abs().max() / (want.float().abs().max() + 1e-6))
                    t = us(lambda: impl(x, layer))  # noqa: B023
                except Exception as exc:  # noqa: BLE001 - report and go on
                    cells.append(f"{label}: failed {type(exc).__name__}: {str(exc)[:80]}")
                    continue
                cells.append(f"{label}: {t:.1f} µs (err {err:.1e})")
                best = min(best, (t, label))
            print(f"{name} {k}->{n} rows {rows}: bf16 {bf16_us:.1f} µs ({2 * n * k / bf16_us / 1e6 / bandwidth * 1e12:.0%} "
                  f"of read bandwidth); int{args.bits} best {best[0]:.1f} µs = {bf16_us / best[0]:.2f}x bf16, "
                  f"{read / best[0] / 1e6 / bandwidth * 1e12:.0%} of read bandwidth ({best[1]})")
            for cell in cells:
                print("    ", cell)
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
