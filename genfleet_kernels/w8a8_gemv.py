"""y = x @ (W * s).T (+ b) for one row x or a few (up to 16) and FP8 W (N, K), with x quantized to FP8
per row inside the kernel and the product on FP8 tensor cores.

The W8A8 numerics of `--quantize fp8` at large batch (genfleet_kernels/quantize_fp8_rows.py, then
torch._scaled_mm: row m is x[m] / sx[m] in e4m3, sx[m] = amax(|x[m]|) / 448) brought to one row,
so no weight byte is converted on the CUDA cores at all: the weight tile is the dot's left operand
(BLOCK_N rows of W, 64 or more, the tensor cores' M), x's rows its right one, padded to 16 (the
smallest N a dot takes). Since the loads feed tl.dot, Triton pipelines them over `num_stages`.

Each program first reads its rows of x in full for their amax (x is a few KB, from L2 after the
first program), then quantizes each x tile it meets: a correctly rounded division by sx (as
genfleet_kernels/quantize_fp8_rows.py divides), a clamp, the cast. Under Triton's CPU interpreter the cast is made exact first
(genfleet_kernels/fp8.py). N / BLOCK_N programs are few (32-64 at N = 4096), so K is split (SPLIT_K) and the
partials summed in the same launch (genfleet_kernels/split_k.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.fp8 import fp8_format, round_to_fp8_grid
from genfleet_kernels.int_weight import INTERPRETED
from genfleet_kernels.reference import FP8_MIN_ROW_SCALE
from genfleet_kernels.split_k import counters, finish_tile, workspace

__all__ = ["w8a8_gemv", "w8a8_name", "W8A8_CONFIGS", "MAX_ROWS"]

MAX_ROWS = 16
# (BLOCK_N, BLOCK_K, split_k, warps, stages); split_k 0: as many as give every SM two programs. The
# x tile is quantized for 16 rows whatever BLOCK_N is: in the sm_90 build's main loop that costs
# 4.2 instructions a weight value at 64x128, 4 warps, and 1.6 at 256x128, 8 warps (docs/perf.md).
W8A8_CONFIGS = ((64, 128, 0, 4, 4), (128, 128, 0, 4, 4), (256, 128, 0, 8, 3))
_BLOCK_X = 256  # x's tile in the amax pass (16 rows of it: 32 float32 registers a thread at 4 warps)


@triton.jit
def _w8a8_gemv_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, K, stride_xm, stride_wn,
    FP8_MAX: tl.constexpr, MANTISSA: tl.constexpr, MIN_EXP: tl.constexpr, MIN_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, EXACT_CAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_X: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.arange(0, 16)  # (16,) x's rows, the real ones below M
    m_mask = m < M
    x_rows = x_ptr + m[:, None] * stride_xm  # (16, 1)
    amax = tl.zeros([16, BLOCK_X], tl.float32)
    for k0 in range(0, K, BLOCK_X):
        k = k0 + tl.arange(0, BLOCK_X)
        x = tl.load(x_rows + k[None, :], mask=m_mask[:, None] & (k < K)[None, :], other=0.0)  # (16, BX)
        amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
    sx = tl.maximum(tl.max(amax, 1) * (1.0 / FP8_MAX), MIN_SCALE)  # (16,) as genfleet_kernels/quantize_fp8_rows.py

    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    n_mask = n < N
    w_rows = w_ptr + n.to(tl.int64)[:, None] * stride_wn  # (BN, 1)
    acc = tl.zeros([BLOCK_N, 16], tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        k = k0 + tl.arange(0, BLOCK_K)  # (BK,)
        if EVEN_K:
            x = tl.load(x_rows + k[None, :], mask=m_mask[:, None], other=0.0)  # (16, BK)
            w = tl.load(w_rows + k[None, :], mask=n_mask[:, None], other=0.0)  # (BN, BK)
        else:
            x = tl.load(x_rows + k[None, :], mask=m_mask[:, None] & (k < K)[None, :], other=0.0)
            w = tl.load(w_rows + k[None, :], mask=n_mask[:, None] & (k < K)[None, :], other=0.0)
        # A correctly rounded division, as genfleet_kernels/quantize_fp8_rows.py: x * (1 / s) lands on the other
        # side of an FP8 rounding boundary now and then (a float32 x on a GPU showed it).
        q = tl.minimum(tl.maximum(tl.math.div_rn(x.to(tl.float32), sx[:, None]), -FP8_MAX), FP8_MAX)  # (16, BK)
        if EXACT_CAST:
            q = round_to_fp8_grid(q, MANTISSA, MIN_EXP)
        acc = tl.dot(w, tl.trans(q.to(w.dtype)), acc)  # (BN, 16)
    y = acc * tl.load(s_ptr + n, mask=n_mask, other=0.0)[:, None] * sx[None, :]  # (BN, 16)
    if HAS_BIAS:
        if pid_k == 0:
            y += tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
    idx = m[None, :] * N + n[:, None]  # (BN, 16) flat indices in out (M, N)
    finish_tile(y, out_ptr + idx, n_mask[:, None] & m_mask[None, :], idx, ws_ptr, cnt_ptr, pid_n, pid_k, M * N, SPLIT_K)


def w8a8_gemv(
    x: torch.Tensor,  # (M, K) float32 / float16 / bfloat16, 1 <= M <= MAX_ROWS
    weight: torch.Tensor,  # (N, K) float8_e4m3fn, unit stride along K
    scale: torch.Tensor,  # (N,) float32
    bias: torch.Tensor | None = None,  # (N,)
    config: tuple[int, int, int, int, int] = W8A8_CONFIGS[0],
) -> torch.Tensor:  # (M, N) in x's dtype
    assert x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS and weight.shape[1] == x.shape[1], (tuple(x.shape), tuple(weight.shape))
    assert weight.dtype == torch.float8_e4m3fn and weight.stride(1) == 1, (weight.dtype, weight.stride())
    assert scale.shape == (weight.shape[0],) and scale.dtype == torch.float32, (tuple(scale.shape), scale.dtype)
    block_n, block_k, split_k, warps, stages = config
    rows, k = x.shape
    n = weight.shape[0]
    tiles = triton.cdiv(n, block_n)
    if split_k == 0:
        split_k = _split_for(tiles, triton.cdiv(k, block_k), x.device)
    x = x.contiguous()
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)  # (M, N)
    fmt = fp8_format(weight.dtype)
    _w8a8_gemv_kernel[(tiles, split_k)](
        x, weight, scale, bias if bias is not None else scale, out, workspace(split_k, rows * n, x.device),
        counters(x.device, tiles) if split_k > 1 else scale, rows, n, k, x.stride(0), weight.stride(0),
        FP8_MAX=fmt["FP8_MAX"], MANTISSA=fmt["MANTISSA"], MIN_EXP=fmt["MIN_EXP"], MIN_SCALE=FP8_MIN_ROW_SCALE,
        HAS_BIAS=bias is not None, SPLIT_K=split_k, EVEN_K=k % block_k == 0, EXACT_CAST=INTERPRETED,
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_X=min(_BLOCK_X, triton.next_power_of_2(k)),
        num_warps=warps, num_stages=stages,
    )
    return out


def w8a8_name(config: tuple[int, int, int, int, int]) -> str:
    """How the first-use timing's log and the benchmarks name a config (split 0: chosen per shape)."""
    return "w8a8_gemv %dx%d/split%d/w%d/s%d" % config


def _split_for(tiles: int, k_tiles: int, device: torch.device) -> int:
    # The smallest power of two that gives every SM two programs, each with at least 4 K tiles.
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
    split = 1
    while tiles * split < 2 * sms and k_tiles >= 8 * split:
        split *= 2
    return split
