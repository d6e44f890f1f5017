"""Paged decode attention over bf16 pages against FP8 (e4m3fn) pages, on a GPU (issue 25, (b)).

Llama-3.1-8B's heads (32 query, 8 KV, head dim 128), pages of 16 slots in a shuffled order, one
new token per sequence, each kernel at its default launch (and FP8 words at the launches given).
FP8 "cast" is the former reading of FP8 pages (keys and values cast per tile, scales loaded in
the tile's iteration), "words" the current one (values read as int32 words, scales a tile ahead).
A context "a-b" spreads the batch's contexts evenly over a..b ((b)'s steps run at 129..384).
Each setting is captured in a CUDA graph of calls cycling through enough copies of the cache to
keep it out of L2, replayed `--repeats` times after one warm-up replay: the median per call. The
ratio "x bf16" is bf16's time over the setting's (>= 0.95 is the issue's target). The relative
error is against the float32 reference over the same (dequantized) pages.

    python -m load.bench_fp8_kv_attention
    python -m load.bench_fp8_kv_attention --tiny     # on the CPU under TRITON_INTERPRET=1: the paths run
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["main"]

PAGE = 16
L2_SAFE_BYTES = 256 << 20


def _lens(spec: str, batch: int) -> list[int]:
    lo, _, hi = spec.partition("-")
    if not hi:
        return [int(lo)] * batch
    a, b = int(lo), int(hi)
    return [a + (b - a) * i // max(batch - 1, 1) for i in range(batch)]


def _batch(lens: list[int], heads: int, n_kv: int, dim: int, copies: int, device: Any, gen: Any) -> dict[str, Any]:
    import torch

    from genfleet_kernels import reference as ref

    batch = len(lens)
    width = -(-max(lens) // PAGE)
    blocks = batch * width
    tables = torch.randperm(blocks, device=device, generator=gen).to(torch.int32).view(batch, width)
    pages: dict[str, list[Any]] = {"bf16": [], "fp8": []}
    for _ in range(copies):
        k, v = (torch.randn(blocks, PAGE, n_kv, dim, device=device, generator=gen).to(torch.bfloat16) for _ in "kv")
        pages["bf16"].append((k, v, None, None))
        (kq, ks), (vq, vs) = ref.quantize_kv_rows(k, torch.float8_e4m3fn), ref.quantize_kv_rows(v, torch.float8_e4m3fn)
        pages["fp8"].append((kq, vq, ks, vs))
    return {
        "q": torch.randn(batch, heads, dim, device=device, generator=gen).to(torch.bfloat16),
        "tables": tables, "lens": torch.tensor(lens, dtype=torch.int32, device=device),
        "qsl": torch.arange(batch + 1, dtype=torch.int32, device=device), "pages": pages,
    }


def _median_us(call: Callable[[], None], calls: int, repeats: int, cuda: bool) -> float:
    import torch

    for _ in range(2):  # compiles
        call()
    if not cuda:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(times)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            call()
    graph.replay()  # warm-up
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.bench_fp8_kv_attention", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--contexts", default="256,384,129-384,2048", help="comma list: a context, or a-b spread")
    p.add_argument("--fp8-launch", default="2/64/4/2,1/128/4/2,1/128/8/2,2/128/4/3",
                   help="extra FP8 words launches, splits/tile/warps/stages, comma separated ('' for none)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tiny", action="store_true", help="a small batch and heads, on the CPU when there is no GPU")
    args = p.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.tiny:
            p.error("no GPU: run with --tiny to check the paths on the CPU")
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels' module is imported
    from genfleet_kernels import reference as ref
    from genfleet_kernels.paged_decode_attention import default_launch, paged_decode_attention

    device = torch.device("cuda" if cuda else "cpu")
    heads, n_kv, dim = (8, 2, 64) if args.tiny else (32, 8, 128)
    batch = 2 if args.tiny else args.batch
    contexts = "40,20-70" if args.tiny and not cuda else args.contexts
    keys = ("num_splits", "block_n", "num_warps", "num_stages")
    extra = [dict(zip(keys, (int(v) for v in c.split("/")))) for c in args.fp8_launch.split(",") if c]
    gen = torch.Generator(device=device).manual_seed(0)
    name = torch.cuda.get_device_name() if cuda else "CPU (Triton interpreter: times say nothing)"
    print(f"card: {name}; batch {batch}, heads {heads}/{n_kv}, head dim {dim}, median of {args.repeats} replays")
    print("\n| context | bf16 KV MB | bf16 µs | FP8 cast µs | x bf16 | FP8 words µs | x bf16 | words x cast | "
          "rel. error cast / words |")
    print("|---|---|---|---|---|---|---|---|---|")
    tuned: list[str] = []
    for spec in contexts.split(","):
        lens = _lens(spec, batch)
        kv_bytes = sum(lens) * n_kv * dim * 2 * 2
        copies = 1 if not cuda else max(1, -(-L2_SAFE_BYTES // (kv_bytes * 3 // 2)))
        b = _batch(lens, heads, n_kv, dim, copies, device, gen)
        q, tables, lens_t, qsl = b["q"], b["tables"], b["lens"], b["qsl"]

        def run(kind: str, i: int, **kw: Any) -> Any:
            k, v, ks, vs = b["pages"][kind][i]
            return paged_decode_attention(q, k, v, tables, lens_t, qsl, dim**-0.5, ks, vs, **kw)

        def timed(kind: str, **kw: Any) -> float:
            turn = itertools.cycle(range(copies))
            return _median_us(lambda: run(kind, next(turn), **kw), max(copies, 20), args.repeats, cuda)

        kq, vq, ks, vs = b["pages"]["fp8"][0]
        want = ref.paged_decode_attention(q.float(), kq, vq, tables, lens_t, qsl, dim**-0.5, ks, vs)

        def err(out: Any) -> float:
            return float((out.float() - want).norm() / want.norm())

        t_bf16 = timed("bf16")
        t_cast, t_words = timed("fp8", fp8_words=False), timed("fp8", fp8_words=True)
        e_cast, e_words = err(run("fp8", 0, fp8_words=False)), err(run("fp8", 0))
        print(f"| {spec} | {kv_bytes / 1e6:.1f} | {t_bf16:.1f} | {t_cast:.1f} | {t_bf16 / t_cast:.2f}x | "
              f"{t_words:.1f} | {t_bf16 / t_words:.2f}x | {t_cast / t_words:.2f}x | {e_cast:.1e} / {e_words:.1e} |",
              flush=True)
        base = default_launch(batch * n_kv, device)
        for launch in extra:
            if launch["block_n"] > 64 and not cuda:
                continue
            try:
                t = timed("fp8", **launch)
            except Exception as exc:  # noqa: BLE001 - a launch the compiler refuses (shared memory) is named, not fatal
                tuned.append(f"| {spec} | {'/'.join(str(launch[k]) for k in keys)} | {type(exc).__name__} | | |")
                continue
            tuned.append(f"| {spec} | {'/'.join(str(launch[k]) for k in keys)} | {t:.1f} | {t_bf16 / t:.2f}x | "
                         f"{err(run('fp8', 0, **launch)):.1e} |")
        tuned.append(f"| {spec} | default {'/'.join(str(base[k]) for k in keys)} | {t_words:.1f} | "
                     f"{t_bf16 / t_words:.2f}x | {e_words:.1e} |")
        del b
        if cuda:
            torch.cuda.empty_cache()
    if tuned:
        print("\nFP8 words at other launches (splits/tile/warps/stages):\n\n| context | launch | µs | x bf16 | rel. error |")
        print("|---|---|---|---|---|")
        print("\n".join(tuned))
    return 0


if __name__ == "__main__":
    sys.exit(main())
