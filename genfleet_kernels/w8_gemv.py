"""y = x @ (W * s).T (+ b) for one row x or a few (up to 16), one-byte weights (int8 or FP8 W (N, K),
float32 s (N,)).

The batch-1 decode path of the one-byte layouts (and of batch-1 verification with drafts): no tile
padded to 16 rows as in genfleet_kernels/w8_linear.py; each program streams BLOCK_N rows of W, converts each
byte in registers and reduces in float32 with FMAs, as genfleet_kernels/linear_one_row.py does for bf16. The
row is the grid's fastest axis, so the rows after the first read a tile of W from L2.

Variants (constexprs, timed per shape by worker/quant/w8.py):
- SPLIT_K: K is split over SPLIT_K programs per tile, their partial sums added by the last one to
  finish, in the same launch (genfleet_kernels/split_k.py): more programs, more bytes in flight on the
  N = 4096 shapes and on down's K = 14336.
- BITS: the byte becomes a float32 by integer operations instead of conversion instructions (on
  sm_90 an e4m3 goes e4m3x2 -> f16x2, then f16 -> f32 on the quarter-rate conversion unit):
  - FP8: the e4m3 -> f16 conversion stays (one instruction per two values, exact, and every
    e4m3 value is a normal f16), then the f16's exponent and mantissa are moved into a float32
    with shifts and masks; that float32 is w * 2**-112 (f16 and f32 biases differ by 112), always
    normal. x is scaled by 2**64 and the sum by 2**48, all exact powers of two; only products
    below 2**-78 in magnitude would lose bits.
  - int8: the integer added to the bits of 2**23 + 128 is that float plus w; one subtraction
    gives w exactly.
- EVEN_K: K is a multiple of BLOCK_K, the loads along K need no mask.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.split_k import counters, finish_tile, workspace

__all__ = ["w8_gemv", "gemv_config", "gemv_name", "GEMV_CONFIGS", "MAX_ROWS"]

MAX_ROWS = 16
# (BLOCK_N, BLOCK_K, warps, stages[, split_k, bits]) that worker/quant/w8.py times per shape; the
# first five were the fastest on some 8B shape on an H200 (docs/perf.md).
GEMV_CONFIGS = ((8, 1024, 8, 3), (4, 1024, 4, 4), (16, 512, 8, 3), (8, 2048, 8, 2), (2, 2048, 4, 4))


@triton.jit
def _byte_to_f32(w, IS_FP8: tl.constexpr, BITS: tl.constexpr):
    # w: a tile of int8 or float8e4nv -> float32; with BITS an FP8 weight comes back times 2**-112.
    if not BITS:
        return w.to(tl.float32)
    elif IS_FP8:
        h = w.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)  # sign-extended f16 bits
        return (((h & 0x7FFF) << 13) | ((h & 0x8000) << 16)).to(tl.float32, bitcast=True)
    else:
        return (w.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0  # 2**23 + 128


@triton.jit
def _w8_gemv_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr, N, K, stride_wn, stride_xm, numel,
    HAS_BIAS: tl.constexpr, IS_FP8: tl.constexpr, BITS: tl.constexpr, SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    m = tl.program_id(0)  # the row: the fastest axis
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    n_mask = n < N
    rows = w_ptr + n.to(tl.int64)[:, None] * stride_wn  # (BN, 1)
    x_row = x_ptr + m * stride_xm
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        k = k0 + tl.arange(0, BLOCK_K)  # (BK,)
        if EVEN_K:
            x = tl.load(x_row + k).to(tl.float32)  # (BK,)
            w = tl.load(rows + k[None, :], mask=n_mask[:, None], other=0.0)  # (BN, BK)
        else:
            x = tl.load(x_row + k, mask=k < K, other=0.0).to(tl.float32)
            w = tl.load(rows + k[None, :], mask=n_mask[:, None] & (k < K)[None, :], other=0.0)
        if BITS and IS_FP8:
            x = x * 18446744073709551616.0  # 2**64
        acc += _byte_to_f32(w, IS_FP8, BITS) * x[None, :]
    y = tl.sum(acc, 1) * tl.load(s_ptr + n, mask=n_mask, other=0.0)  # (BN,)
    if BITS and IS_FP8:
        y = y * 281474976710656.0  # 2**48: with x's 2**64, undoes the weight's 2**-112
    if HAS_BIAS:
        if pid_k == 0:  # once, whichever partial carries it
            y += tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
    idx = m * N + n
    finish_tile(y, out_ptr + idx, n_mask, idx, ws_ptr, cnt_ptr, m * tl.num_programs(1) + pid_n, pid_k, numel, SPLIT_K)


def w8_gemv(
    x: torch.Tensor,  # (M, K), 1 <= M <= MAX_ROWS
    weight: torch.Tensor,  # (N, K) int8 or float8_e4m3fn, unit stride along K
    scale: torch.Tensor,  # (N,) float32
    bias: torch.Tensor | None = None,  # (N,)
    config: tuple[int, ...] = GEMV_CONFIGS[0],  # (block_n, block_k, warps, stages[, split_k[, bits]])
) -> torch.Tensor:  # (M, N) in x's dtype
    assert x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS and weight.shape[1] == x.shape[1], (tuple(x.shape), tuple(weight.shape))
    assert weight.dtype in (torch.int8, torch.float8_e4m3fn) and weight.stride(1) == 1, (weight.dtype, weight.stride())
    assert scale.shape == (weight.shape[0],) and scale.dtype == torch.float32, (tuple(scale.shape), scale.dtype)
    block_n, block_k, warps, stages, split_k, bits = gemv_config(config)
    rows, k = x.shape
    n = weight.shape[0]
    x = x.contiguous()
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)  # (M, N)
    grid = (rows, triton.cdiv(n, block_n), split_k)
    assert grid[1] < 2**16, f"{n} outputs in tiles of {block_n}: more tiles than a grid's second axis holds"
    _w8_gemv_kernel[grid](
        x, weight, scale, bias if bias is not None else scale, out, workspace(split_k, rows * n, x.device),
        counters(x.device, rows * grid[1]) if split_k > 1 else scale, n, k, weight.stride(0), x.stride(0), rows * n,
        HAS_BIAS=bias is not None, IS_FP8=weight.dtype == torch.float8_e4m3fn, BITS=bits, SPLIT_K=split_k,
        EVEN_K=k % block_k == 0, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )
    return out


def gemv_config(config: tuple[int, ...]) -> tuple[int, int, int, int, int, bool]:
    """(block_n, block_k, warps, stages[, split_k[, bits]]) with the defaults filled in (1, False)."""
    block_n, block_k, warps, stages, *rest = config
    return block_n, block_k, warps, stages, rest[0] if rest else 1, bool(rest[1]) if len(rest) > 1 else False


def gemv_name(config: tuple[int, ...]) -> str:
    """How the first-use timing's log and the benchmarks name a config."""
    block_n, block_k, warps, stages, split, bits = gemv_config(config)
    return f"w8_gemv {block_n}x{block_k}/w{warps}/s{stages}" + (f"/split{split}" if split > 1 else "") + ("/bits" if bits else "")
