"""Paged decode attention's launch settings swept per (batch, context), on a GPU.

For each shape (Llama-3.1-8B's heads: 32 query, 8 KV, head dim 128, bf16 pages of 16 slots in a
shuffled order), every combination of splits, key-tile width, warps and pipeline stages is checked
against the float32 reference and timed replayed from a CUDA graph that cycles through enough
copies of the cache to keep it out of L2 (a decoder's 32 layers of KV do not fit there either).
"% of bandwidth" is the bytes of K and V a call must read over the card's copy rate (read + write
of a device-to-device copy, so the figure is conservative by up to 2x of a read-only rate).

    python -m load.sweep_decode_attention --shapes 1x384,64x384,256x1152
"""

from __future__ import annotations

import argparse
import itertools
import sys
from typing import Any

__all__ = ["main"]

HEADS, KV_HEADS, DIM, PAGE = 32, 8, 128, 16
L2_SAFE_BYTES = 256 << 20


def _cache(batch: int, ctx: int, copies: int, gen: Any) -> tuple[Any, ...]:
    import torch

    blocks = batch * -(-ctx // PAGE)
    kc = [torch.randn(blocks, PAGE, KV_HEADS, DIM, dtype=torch.bfloat16, device="cuda", generator=gen) for _ in range(copies)]
    vc = [torch.randn_like(k) for k in kc]
    tables = torch.randperm(blocks, device="cuda", dtype=torch.int32, generator=gen).view(batch, -1)
    lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    qsl = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    q = torch.randn(batch, HEADS, DIM, dtype=torch.bfloat16, device="cuda", generator=gen)
    return q, kc, vc, tables, lens, qsl


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.sweep_decode_attention", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="1x384,1x1152,1x4096,16x1152,64x384,64x1152,256x384,256x1152",
                   help="comma list of BATCHxCONTEXT")
    p.add_argument("--splits", default="1,2,4,8,16,32")
    p.add_argument("--block-n", default="32,64,128")
    p.add_argument("--warps", default="4,8")
    p.add_argument("--stages", default="2,3")
    args = p.parse_args(argv)
    import torch

    from genfleet_kernels import reference as ref
    from genfleet_kernels.paged_decode_attention import default_launch, paged_decode_attention
    from worker.ops import gpu_milliseconds

    src = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_rate = 2 * src.numel() / (gpu_milliseconds(lambda: dst.copy_(src), False, 10) / 10 / 1e3)
    del src, dst
    print(f"card: {torch.cuda.get_device_name()}; copy {copy_rate / 1e12:.2f} TB/s (read + write)", flush=True)
    grid = list(itertools.product(*(tuple(int(v) for v in s.split(",")) for s in
                                    (args.splits, args.block_n, args.warps, args.stages))))
    gen = torch.Generator(device="cuda").manual_seed(0)
    print("\n| batch x context | KV MB per call | default (splits/N/warps/stages) µs | % bw | best µs | % bw | best "
          "(splits/N/warps/stages) | x default | best rel. error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        batch, ctx = (int(v) for v in shape.split("x"))
        kv_bytes = batch * ctx * KV_HEADS * DIM * 2 * 2
        copies = max(1, -(-L2_SAFE_BYTES // kv_bytes))
        q, kc, vc, tables, lens, qsl = _cache(batch, ctx, copies, gen)
        want = ref.paged_decode_attention(q.float(), kc[0].float(), vc[0].float(), tables, lens, qsl, DIM**-0.5)

        def timed(**launch: int) -> tuple[float, float]:
            got = paged_decode_attention(q, kc[0], vc[0], tables, lens, qsl, DIM**-0.5, **launch).float()
            err = float((got - want).norm() / want.norm())
            turn = itertools.cycle(range(copies))

            def call() -> None:
                i = next(turn)
                paged_decode_attention(q, kc[i], vc[i], tables, lens, qsl, DIM**-0.5, **launch)

            calls = max(copies, 20)
            return gpu_milliseconds(call, True, calls) / calls * 1e3, err

        base = default_launch(batch * KV_HEADS, q.device)
        t_base, _ = timed(**base)
        results = []
        for splits, block_n, warps, stages in grid:
            try:
                t, err = timed(num_splits=splits, block_n=block_n, num_warps=warps, num_stages=stages)
            except Exception as exc:  # noqa: BLE001 - a config the compiler refuses (shared memory) is skipped
                print(f"  {shape} {splits}/{block_n}/{warps}/{stages}: {type(exc).__name__}", file=sys.stderr)
                continue
            if err < 2e-2:
                results.append((t, err, (splits, block_n, warps, stages)))
        t_best, err_best, best = min(results)
        pct = (lambda t: f"{100 * kv_bytes / (t / 1e6) / copy_rate:.0f}%")
        named = "/".join(str(base[k]) for k in ("num_splits", "block_n", "num_warps", "num_stages"))
        print(f"| {batch} x {ctx} | {kv_bytes / 1e6:.1f} | {t_base:.1f} ({named}) | {pct(t_base)} | {t_best:.1f} | "
              f"{pct(t_best)} | {'/'.join(map(str, best))} | {t_base / t_best:.2f}x | {err_best:.1e} |", flush=True)
        top = sorted(results)[:5]
        print("  top 5: " + "; ".join(f"{'/'.join(map(str, c))} {t:.1f}" for t, _, c in top), file=sys.stderr, flush=True)
        del q, kc, vc
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
