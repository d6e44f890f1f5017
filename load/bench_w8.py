"""Microbenchmark of the one-byte-weight linears and the FP8 KV cache on one GPU, against bf16.

Linears: the Llama-3.1-8B decoder shapes at several batch sizes; bf16 `F.linear` beside the path
W8Linear picks for FP8 and int8 weights (worker/quant/w8.py), each as GPU time of graph-replayed
calls, and the weight bytes read per µs against the card's copy bandwidth. Attention: the paged
decode and varlen kernels over bf16 and FP8 pages at the (b) shape and a long context.

    python -m load.bench_w8
    python -m load.bench_w8 --fp8 --rows 1,16,64   # FP8 only: the path picked, every one-row GEMV
                                                  # config, weights cycled through copies beyond L2
"""

from __future__ import annotations

import torch

from genfleet_kernels.paged_decode_attention import paged_decode_attention
from genfleet_kernels.store_kv import store_kv
from genfleet_kernels.reference import quantize_fp8_rows
from worker.ops import gpu_milliseconds
from worker.quant.int8 import quantize_int8_rows
from worker.quant.w8 import W8Linear, w8_choices

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
BATCHES = (1, 8, 64, 256, 1024, 4096)


def copy_bandwidth() -> float:
    src = torch.empty(1 << 29, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 2 / (gpu_milliseconds(lambda: dst.copy_(src), False, 10) / 10 / 1e3)


def linears(bandwidth: float) -> None:
    print("| shape KxN | batch | bf16 µs | fp8 µs (x bf16) | int8 µs (x bf16) | fp8 weight GB/s (% of copy) |")
    print("|---|---|---|---|---|---|")
    for name, (k, n) in SHAPES.items():
        dense = torch.randn(n, k, device="cuda") / k**0.5
        w_bf16 = dense.to(torch.bfloat16)
        fp8 = W8Linear(*quantize_fp8_rows(dense), None, torch.bfloat16, torch.device("cuda"))
        int8 = W8Linear(*quantize_int8_rows(dense), None, torch.bfloat16, torch.device("cuda"))
        del dense
        for m in BATCHES:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            fp8(x), int8(x)  # picks the path for this bucket
            base = gpu_milliseconds(lambda: torch.nn.functional.linear(x, w_bf16), True) / 20 * 1e3
            t8 = gpu_milliseconds(lambda: fp8(x), True) / 20 * 1e3
            ti = gpu_milliseconds(lambda: int8(x), True) / 20 * 1e3
            gbs = n * k / (t8 / 1e6) / 1e9
            print(f"| {name} {k}x{n} | {m} | {base:.1f} | {t8:.1f} ({base / t8:.2f}x) | {ti:.1f} ({base / ti:.2f}x) | "
                  f"{gbs:.0f} ({100 * gbs * 1e9 / bandwidth:.0f}%) |")
    print()
    print("choices: " + "; ".join(f"{k}: {v}" for k, v in w8_choices().items()))


def fp8_linears(bandwidth: float, batches: list[int]) -> None:
    """FP8 weights beside bf16, each timed over enough weight copies to stay out of L2 (a decoder's
    layers do not fit there either): the path W8Linear picks, and at one row every GEMV config."""
    from genfleet_kernels.w8_gemv import GEMV_CONFIGS, w8_gemv
    from load.bench_int_weight import L2_SAFE_BYTES as safe
    from load.bench_int_weight import per_call_us
    table = []
    for name, (k, n) in SHAPES.items():
        dense = torch.randn(n, k, device="cuda") / k**0.5
        w_bf16 = [dense.to(torch.bfloat16) for _ in range(max(2, -(-safe // (2 * n * k))))]
        weight, scale = quantize_fp8_rows(dense)
        fp8 = [W8Linear(weight.clone(), scale, None, torch.bfloat16, torch.device("cuda"))
               for _ in range(max(2, -(-safe // (n * k))))]
        del dense
        for m in batches:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            want = torch.nn.functional.linear(x.float(), weight.float() * scale)
            got = fp8[0](x).float()  # picks the path for this bucket
            err = float((got - want).norm() / want.norm())
            base = per_call_us(lambda w: torch.nn.functional.linear(x, w), w_bf16)  # noqa: B023
            t8 = per_call_us(lambda lin: lin(x), fp8)  # noqa: B023
            read = n * k + 4 * n + 2 * m * (k + n)
            picked = w8_choices()[f"fp8 {k}x{n} batch<={1 << max(0, m - 1).bit_length()}"]
            table.append((name, k, n, m, base, t8, read / (t8 / 1e6) / bandwidth, picked, err))
            if m == 1:
                for config in GEMV_CONFIGS:
                    t = per_call_us(lambda lin: w8_gemv(x, lin.weight, lin.scale, None, config), fp8)  # noqa: B023
                    print(f"{name} {k}x{n} 1 row gemv {config}: {t:.2f} µs, {read / (t / 1e6) / bandwidth:.0%} "
                          f"of bandwidth, {base / t:.2f}x bf16", flush=True)
    print("\n| shape (K -> N) | rows | bf16 µs | fp8 µs | x bf16 | % of bandwidth | picked | rel. error |")
    print("|---|---|---|---|---|---|---|---|")
    for name, k, n, m, base, t8, frac, picked, err in table:
        print(f"| {name} {k} -> {n} | {m} | {base:.1f} | {t8:.1f} | {base / t8:.2f}x | {frac:.0%} | {picked} | {err:.1e} |")


def attention() -> None:
    heads, n_kv, dim, block = 32, 8, 128, 16
    print("\n| attention (32/8 heads, D 128) | bf16 µs | fp8 e4m3 µs | fp8 / bf16 |")
    print("|---|---|---|---|")
    for batch, ctx in ((64, 384), (1, 4096), (64, 2048)):
        blocks = batch * (-(-ctx // block))
        q = torch.randn(batch, heads, dim, device="cuda", dtype=torch.bfloat16)
        tables = torch.arange(blocks, device="cuda", dtype=torch.int32).view(batch, -1)
        lens = torch.full((batch,), ctx, device="cuda", dtype=torch.int32)
        qsl = torch.arange(batch + 1, device="cuda", dtype=torch.int32)
        kc = torch.randn(blocks, block, n_kv, dim, device="cuda", dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        kq, ks = quantize_kv(kc)
        vq, vs = quantize_kv(vc)
        t_bf16 = gpu_milliseconds(lambda: paged_decode_attention(q, kc, vc, tables, lens, qsl, dim**-0.5), True) / 20 * 1e3
        t_fp8 = gpu_milliseconds(lambda: paged_decode_attention(q, kq, vq, tables, lens, qsl, dim**-0.5, ks, vs), True) / 20 * 1e3
        print(f"| decode, batch {batch}, ctx {ctx} | {t_bf16:.1f} | {t_fp8:.1f} | {t_fp8 / t_bf16:.2f} |")
    tokens = 64
    k = torch.randn(tokens, n_kv, dim, device="cuda", dtype=torch.bfloat16)
    slots = torch.arange(tokens, device="cuda")
    kc = torch.zeros(8, block, n_kv, dim, device="cuda", dtype=torch.bfloat16)
    kq = kc.to(torch.float8_e4m3fn)
    sc = torch.zeros(8, block, n_kv, device="cuda", dtype=torch.float16)
    t_bf16 = gpu_milliseconds(lambda: store_kv(k, k, kc, kc, slots), True) / 20 * 1e3
    t_fp8 = gpu_milliseconds(lambda: store_kv(k, k, kq, kq, slots, sc, sc), True) / 20 * 1e3
    print(f"| store_kv, 64 tokens | {t_bf16:.1f} | {t_fp8:.1f} | {t_fp8 / t_bf16:.2f} |")


def quantize_kv(cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from genfleet_kernels.reference import quantize_kv_rows

    return quantize_kv_rows(cache, torch.float8_e4m3fn)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp8", action="store_true", help="FP8 linears only (no int8, no attention)")
    parser.add_argument("--rows", default="1,16,64", help="with --fp8: the batch sizes")
    args = parser.parse_args(argv)
    bandwidth = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}; copy {bandwidth / 1e12:.2f} TB/s (read + write)\n")
    if args.fp8:
        fp8_linears(bandwidth, [int(r) for r in args.rows.split(",")])
        return 0
    linears(bandwidth)
    attention()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
