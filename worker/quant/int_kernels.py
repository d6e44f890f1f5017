"""The CUDA forward of IntWeightLinear: per weight shape and batch bucket, the fastest kernel.

Candidates (genfleet_kernels/int_weight_*.py): the GEMV configs for one row (the float32 GEMV and the
packed-pair one, with x's pairs made by a launch of their own or in the kernel), the tensor-core GEMM configs
(with split K for few rows, summed in the same launch), and dequantize + cuBLAS from 64 rows.
Each (shape, group, bits, bucket) is timed once on first use, outside CUDA graph capture, by graph
replay (decode runs inside graphs, so device time is what counts); the capture warm-up of every
decode bucket makes those choices before any graph is recorded. The dequantize + cuBLAS threshold is
therefore measured per shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from genfleet_kernels import reference
from worker.ops import gpu_milliseconds

if TYPE_CHECKING:
    from worker.quant.int_weight import IntWeightLinear

__all__ = ["int_weight_linear", "choices", "candidates", "bucket_of"]

log = logging.getLogger("genfleet.worker.quant")

Impl = Callable[[torch.Tensor, "IntWeightLinear"], torch.Tensor]
_BUCKETS = (1, 16, 32, 64, 128, 256, 1024)  # rows; a batch runs the choice of the smallest bucket >= it
# What the first-use timing tries: the configs that won a shape of the Llama-3.1-8B linears on an
# H200 (docs/perf.md, `load/bench_int_weight.py --sweep` times a wider set), plus split-free tiles
# for the buckets above 64 rows.
GEMV = ((16, 128, 1, 4, 3, False), (8, 128, 1, 4, 3, False), (16, 64, 1, 2, 3, False), (16, 128, 2, 4, 3, False),
        (32, 64, 2, 4, 3, False), (8, 128, 1, 4, 3, True), (16, 128, 1, 4, 3, "planes"), (8, 128, 1, 4, 3, "planes"),
        (32, 128, 1, 8, 3, "planes"), (16, 128, 2, 4, 3, "planes"))
# (block_n, block_w, split_k, warps, stages, loads): loads True = 16-byte ("wide"), False = 4-byte ("narrow"),
# "planes" = wide with x through x_planes first (genfleet_kernels/int_weight_gemv.py); the planes builds are
# not measured on a GPU yet (docs/perf.md), the first-use timing decides.
F16X2 = ((8, 128, 1, 4, 3, True), (16, 256, 1, 8, 3, True), (16, 64, 1, 2, 3, True), (16, 128, 4, 4, 3, True),
         (16, 256, 1, 2, 3, True, True, True), (16, 512, 1, 4, 3, True, True, False),
         (16, 128, 1, 1, 3, True, True, False), (8, 256, 1, 2, 3, True, True, True),
         (16, 256, 2, 2, 3, True, True, True), (16, 256, 4, 2, 3, True, True, True))
# The packed-pair GEMV of 4-bit weights and 16-bit x (genfleet_kernels/int_weight_gemv_f16x2.py), the fastest
# one-row kernel on every 8B shape (H200, docs/perf.md 2026-12-02 19:14 UTC): (block_n, block_w,
# split_k, warps, stages, fold[, fused, ahead]). The first four: each shape's winner then, x through
# the x_pairs launch. The rest make x's pairs in the kernel (fused) and keep the next tile's loads in
# flight (ahead); not measured on a GPU yet, the first-use timing decides. Their tiles are as wide
# as 128 words a warp, so each thread holds all 8-16 rows of its words and makes their pairs once
# (sm_90 builds off the GPU: 2.3-2.6 instructions a weight value against 3.3 with 4 rows a thread,
# and 1.9-2.2 for the x_pairs builds). The GEMV above stays for what it cannot take (float32 x or
# scales, 8 bits, K not a multiple of 16).
GEMM = ((16, 64, 128, 2, True, True, 4, 4), (16, 64, 128, 4, True, True, 4, 4), (16, 64, 128, 4, True, True, 4, 5),
        (16, 64, 128, 8, True, True, 4, 4), (64, 64, 128, 2, True, True, 4, 3), (64, 64, 128, 4, True, True, 4, 3),
        (64, 64, 128, 4, True, True, 4, 4), (64, 64, 128, 4, False, True, 4, 4), (64, 128, 128, 1, False, True, 8, 3),
        (128, 128, 64, 1, False, True, 8, 3),
        # The fastest at 64 rows with the zero point (and scale) in the tile, H200 2026-12-03 (docs/perf.md):
        (64, 64, 128, 4, True, True, 4, 3, "zero"), (64, 64, 128, 4, True, True, 4, 4, "zero"),
        (64, 64, 128, 2, True, True, 4, 3, "zero"), (64, 64, 128, 4, False, True, 4, 4, "tile"),
        (64, 128, 128, 1, False, True, 8, 3, "tile"))
# (block_m, block_n, block_k, split_k, swap, ptx, warps, stages[, into]); into: where a tile's zero
# point and scale go (genfleet_kernels/int_weight_gemm.py), "acc" when left out.
_choice: dict[tuple[int, int, int, int, int], tuple[str, Impl]] = {}


def int_weight_linear(x: torch.Tensor, layer: IntWeightLinear) -> torch.Tensor:  # (T, K) -> (T, N)
    if layer.perm is not None:
        x = x.index_select(1, layer.perm)  # act order: the stored channel order
    bucket = bucket_of(x.shape[0])
    key = (layer.out_features, layer.in_features, layer.group_size, layer.bits, bucket)
    chosen = _choice.get(key)
    if chosen is None:
        if torch.cuda.is_current_stream_capturing():  # never timed inside a capture
            return candidates(layer, bucket)[0][1](x, layer)
        chosen = _fastest(layer, bucket, x.dtype)
        _choice[key] = chosen
        log.info("int%d linear %dx%d group %d, %d rows: %s", layer.bits, layer.in_features, layer.out_features,
                 layer.group_size, bucket, chosen[0])
    return chosen[1](x, layer)


def bucket_of(rows: int) -> int:
    return next((b for b in _BUCKETS if rows <= b), _BUCKETS[-1])


def choices() -> dict[str, str]:
    """What was picked so far: "KxN g<group> int<bits> <rows>" -> the kernel and its config."""
    return {f"{k[1]}x{k[0]} g{k[2]} int{k[3]} {k[4]}": v[0] for k, v in _choice.items()}


def _fastest(layer: IntWeightLinear, bucket: int, dtype: torch.dtype) -> tuple[str, Impl]:
    x = torch.randn(bucket, layer.in_features, dtype=dtype, device=layer.qweight.device)
    want = _reference(x.float(), layer).float()  # (bucket, N)
    tolerance = 2e-2 * float(want.abs().max()) + 1e-3
    best: tuple[float, str, Impl] | None = None
    for name, impl in candidates(layer, bucket):
        try:
            if float((impl(x, layer).float() - want).abs().max()) > tolerance:  # never pick a wrong kernel
                log.warning("int%d %s disagrees with the torch reference: skipped", layer.bits, name)
                continue
            took = gpu_milliseconds(lambda: impl(x, layer), graphed=True)  # noqa: B023 - called at once
        except Exception as exc:  # a config this card cannot compile is skipped, not fatal
            log.debug("int%d %s failed: %s", layer.bits, name, exc)
            continue
        if best is None or took < best[0]:
            best = (took, name, impl)
    if best is None:
        return "torch reference", _reference
    return best[1], best[2]


def candidates(layer: IntWeightLinear, bucket: int, gemv: tuple[tuple[int | bool | str, ...], ...] = GEMV,
               gemm: tuple[tuple[int | bool | str, ...], ...] = GEMM,
               f16x2: tuple[tuple[int | bool, ...], ...] = F16X2) -> list[tuple[str, Impl]]:
    """The kernels (and configs) worth timing for `bucket` rows of this layer's shape."""
    from genfleet_kernels.int_weight import tile_groups
    from genfleet_kernels.int_weight_dequant import int_weight_dequant
    from genfleet_kernels.int_weight_gemm import int_weight_gemm
    from genfleet_kernels.int_weight_gemv import int_weight_gemv
    from genfleet_kernels.int_weight_gemv_f16x2 import int_weight_gemv_f16x2

    per = 32 // layer.bits
    k = layer.in_features
    fits = lambda block_k: tile_groups(block_k, layer.group_size, k, layer.bits) is not None  # noqa: E731
    found: list[tuple[str, Impl]] = []
    if bucket == 1:
        for bn, bw, sk, warps, stages, wide in gemv:
            if fits(bw * per) and bw * per * sk <= 2 * k:  # every split has work
                kind = {True: "", False: " narrow", "planes": " planes"}[wide]
                found.append((f"gemv n{bn} w{bw} splitk{sk} warps{warps} stages{stages}{kind}",
                              lambda x, lay, c=(bn, bw, sk, warps, stages, wide): int_weight_gemv(
                                  x, lay.qweight, lay.scales, lay.zeros, lay.group_size, lay.bits, lay.bias,
                                  block_n=c[0], block_w=c[1], split_k=c[2], num_warps=c[3], num_stages=c[4],
                                  wide=c[5] is True, planes=c[5] == "planes")))
        pairs_fit = layer.bits == 4 and k % 16 == 0 and layer.scales.element_size() == 2  # x's dtype: checked at the call
        for bn, bw, sk, warps, stages, fold, *rest in f16x2 if pairs_fit else ():
            fused, ahead = (rest + [False, False])[:2]
            if fits(bw * per) and bw * per * sk <= 2 * k:
                found.append((f"gemv f16x2 n{bn} w{bw} splitk{sk} warps{warps} stages{stages}{' fold' if fold else ''}"
                              f"{' fused' if fused else ''}{' ahead' if ahead else ''}",
                              lambda x, lay, c=(bn, bw, sk, warps, stages, fold, fused, ahead): int_weight_gemv_f16x2(
                                  x, lay.qweight, lay.scales, lay.zeros, lay.group_size, lay.bits, lay.bias,
                                  block_n=c[0], block_w=c[1], split_k=c[2], num_warps=c[3], num_stages=c[4],
                                  fold=c[5], fused=c[6], ahead=c[7])))
    for bm, bn, bk, sk, swap, ptx, warps, stages, *rest in gemm:
        into = rest[0] if rest else "acc"
        if into != "acc" and (not fits(bk) or tile_groups(bk, layer.group_size, k, layer.bits)[0] != 1):  # type: ignore[index]
            continue  # a tile that spans groups is dequantized per word: into changes nothing
        small_enough = bm <= max(16, bucket) and not (sk > 1 and bucket > 64)
        if fits(bk) and small_enough and bk * sk <= 2 * k and not (swap and bm > 64):
            found.append((f"gemm m{bm} n{bn} k{bk} splitk{sk}{' swap' if swap else ''}{' ptx' if ptx else ''} "
                          f"warps{warps} stages{stages}{'' if into == 'acc' else f' into {into}'}",
                          lambda x, lay, c=(bm, bn, bk, sk, swap, ptx, warps, stages, into): int_weight_gemm(
                              x, lay.qweight, lay.scales, lay.zeros, lay.group_size, lay.bits, lay.bias,
                              block_m=c[0], block_n=c[1], block_k=c[2], split_k=c[3], swap=c[4], ptx=c[5],
                              num_warps=c[6], num_stages=c[7], into=c[8])))
    if bucket >= 64:
        def dense(x: torch.Tensor, lay: IntWeightLinear) -> torch.Tensor:
            weight = int_weight_dequant(lay.qweight, lay.scales, lay.zeros, lay.group_size, lay.bits, x.dtype)
            return torch.nn.functional.linear(x, weight, lay.bias)

        found.append(("dequantize + cuBLAS", dense))
    return found or [("torch reference", _reference)]


def _reference(x: torch.Tensor, layer: IntWeightLinear) -> torch.Tensor:
    return reference.int_weight_linear(x, layer.qweight, layer.scales, layer.zeros, layer.group_size, layer.bits,
                                       None, layer.bias)
