"""One-row linears (batch-1 decoding) swept on a GPU: cuBLAS against every launch setting of
genfleet_kernels/linear_one_row.py on the Llama-3.1-8B shapes.

Each candidate is checked against float32 and timed replayed from a CUDA graph that cycles through
enough copies of the weight to keep it out of L2 (a decoder's 32 layers do not fit there either;
the same weight replayed alone would be read from L2 from the second call on). The rate is the
weight's bytes over the time per call (load/bench_gpu.py measures the card's copy rate).

    python -m load.sweep_one_row                       # the 8B shapes, about a minute on an H200
    python -m load.sweep_one_row --shapes 576x960 --top 3
"""

from __future__ import annotations

import argparse
import itertools
import sys
from typing import Any

__all__ = ["main"]

SHAPES_8B = "4096x6144,4096x4096,4096x28672,14336x4096,4096x128256"  # K x N: qkv, o, gate_up, down, LM head
L2_SAFE_BYTES = 256 << 20
CALLS = 32


def _graph_us(fn: Any, calls: int = 1) -> float:
    import triton.testing

    fn()
    return float(triton.testing.do_bench_cudagraph(fn, rep=20)) * 1e3 / calls


def _candidates() -> list[tuple[int, int, int, int]]:
    return [
        (bn, bk, warps, 3)
        for bn, bk, warps in itertools.product((1, 2, 4, 8), (256, 512, 1024, 2048, 4096), (2, 4, 8))
        if bn * bk <= 8192 and bk // (32 * warps) >= 1
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.sweep_one_row", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=SHAPES_8B, help="K x N pairs, comma list")
    p.add_argument("--rows", default="1", help="rows of x (1 to genfleet_kernels/linear_one_row.MAX_ROWS), comma list")
    p.add_argument("--top", type=int, default=5, help="fastest settings shown per shape")
    args = p.parse_args(argv)

    import torch

    from genfleet_kernels.linear_one_row import linear_one_row

    print(f"card: {torch.cuda.get_device_name()}")
    print("| K x N | rows | cuBLAS µs (GB/s) | best Triton µs (GB/s) | x cuBLAS | best settings (bn x bk / warps: µs) |")
    print("|---|---|---|---|---|---|")
    candidates = _candidates()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for shape, rows in itertools.product(args.shapes.split(","), [int(r) for r in args.rows.split(",")]):
        k, n = (int(v) for v in shape.split("x"))
        copies = max(1, -(-L2_SAFE_BYTES // (2 * n * k)))
        ws = [torch.randn(n, k, device="cuda", generator=gen, dtype=torch.bfloat16) / k**0.5 for _ in range(copies)]
        x = torch.randn(rows, k, device="cuda", generator=gen, dtype=torch.bfloat16)
        want = torch.nn.functional.linear(x.float(), ws[0].float())

        def cycle(fn: Any) -> Any:
            return lambda: [fn(ws[i % copies]) for i in range(CALLS)]

        base = _graph_us(cycle(lambda w: torch.nn.functional.linear(x, w)), CALLS)
        timed = []
        for c in candidates:
            if -(-n // c[0]) >= 2**16:
                continue
            got = linear_one_row(x, ws[0], None, *c)
            torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)
            timed.append((_graph_us(cycle(lambda w, c=c: linear_one_row(x, w, None, *c)), CALLS), c))
        timed.sort()
        best_us, _ = timed[0]
        gbs = 2 * n * k / 1e3
        cells = ", ".join(f"{bn}x{bk}/w{w}: {us:.1f}" for us, (bn, bk, w, _) in timed[: args.top])
        print(f"| {k}x{n} | {rows} | {base:.1f} ({gbs / base:.0f}) | {best_us:.1f} ({gbs / best_us:.0f}) | "
              f"{base / best_us:.2f}x | {cells} |")
        del ws
    return 0


if __name__ == "__main__":
    sys.exit(main())
