"""`int_weight_gemm`: rows of x times the integer weight-only layout on tensor cores (genfleet_kernels/int_weight.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.int_weight import INTERPRETED, check_layout, plane, planes_bf16, tile_groups
from genfleet_kernels.split_k import counters, finish_tile, workspace

__all__ = ["int_weight_gemm", "weight_tile"]


@triton.jit
def _dequantized(words, i: tl.constexpr, s, zs, BITS: tl.constexpr, FOLD: tl.constexpr):
    v = plane(words, i, BITS)
    if not FOLD:  # scales and zeros per word: (q - z) * s = q * s - z * s
        v = v * s - zs
    return v


@triton.jit
def weight_tile(words, s, zs, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, BITS: tl.constexpr,
                FOLD: tl.constexpr):
    # (BN, BW) words -> (BN, BW * P) floats in channel order: the values of each word side by side
    # (joined, so no value is gathered or loaded twice). FOLD: the integers q; else (q - z) * s.
    if BITS == 4:
        t = tl.join(
            tl.join(tl.join(_dequantized(words, 0, s, zs, BITS, FOLD), _dequantized(words, 4, s, zs, BITS, FOLD)),
                    tl.join(_dequantized(words, 2, s, zs, BITS, FOLD), _dequantized(words, 6, s, zs, BITS, FOLD))),
            tl.join(tl.join(_dequantized(words, 1, s, zs, BITS, FOLD), _dequantized(words, 5, s, zs, BITS, FOLD)),
                    tl.join(_dequantized(words, 3, s, zs, BITS, FOLD), _dequantized(words, 7, s, zs, BITS, FOLD))),
        )  # (BN, BW, 2, 2, 2): value 4a + 2b + c of each word at [a, b, c]
    else:
        t = tl.join(tl.join(_dequantized(words, 0, s, zs, BITS, FOLD), _dequantized(words, 2, s, zs, BITS, FOLD)),
                    tl.join(_dequantized(words, 1, s, zs, BITS, FOLD), _dequantized(words, 3, s, zs, BITS, FOLD)))
    return tl.reshape(t, (BLOCK_N, BLOCK_W * (32 // BITS)))


@triton.jit
def _weight_tile_bf16(words, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    # weight_tile's FOLD tile for 4 bits, unpacked by PTX: bfloat16 128 + q.
    p0, p1, p2, p3, p4, p5, p6, p7 = planes_bf16(words)
    t = tl.join(tl.join(tl.join(p0, p4), tl.join(p2, p6)), tl.join(tl.join(p1, p5), tl.join(p3, p7)))
    return tl.reshape(t, (BLOCK_N, BLOCK_W * 8))


@triton.jit
def _minus_zero_bf16(q, z):
    # (128 + q) - (128 + z) on bfloat16 pairs: exact (the operands are integers to 143, the result to 15).
    return tl.inline_asm_elementwise(
        asm="""
        {
        .reg .b32 m;
        mov.b32 m, 0xBF80BF80;
        fma.rn.bf16x2 $0, $2, m, $1;
        }
        """,
        constraints="=r,r,r", args=[q, z], dtype=tl.bfloat16, is_pure=True, pack=2,
    )


@triton.jit
def _dequantized_bf16(q, z, s):
    # ((128 + q) - (128 + z)) * s on bfloat16 pairs: the difference exact, the product rounded once
    # (s itself rounded to bfloat16 first: a weight within 2**-8 of (q - z) * s, as a bf16 linear's).
    return tl.inline_asm_elementwise(
        asm="""
        {
        .reg .b32 m, d;
        mov.b32 m, 0xBF80BF80;
        fma.rn.bf16x2 d, $2, m, $1;
        mov.b32 m, 0x80008000;
        fma.rn.bf16x2 $0, d, $3, m;
        }
        """,
        constraints="=r,r,r,r", args=[q, z, s], dtype=tl.bfloat16, is_pure=True, pack=2,
    )


@triton.jit
def _tile_dot(q, xt, acc, SWAP: tl.constexpr, IEEE: tl.constexpr):
    # q (BN, BK) times xt (BK, BM), into acc if given: (BN, BM) with SWAP, else (BM, BN).
    if SWAP:
        a, b = q, xt
    else:
        a, b = tl.trans(xt), tl.trans(q)
    if IEEE:
        d = tl.dot(a, b, acc, input_precision="ieee")
    else:
        d = tl.dot(a, b, acc)
    return d


@triton.jit
def _gemm_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, K, kw, NG, stride_xm, G: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, SWAP: tl.constexpr, FOLD: tl.constexpr, IEEE: tl.constexpr,
    PTX: tl.constexpr, INTO: tl.constexpr,
):
    # FOLD: the tile lies in one group, so the dot runs on the integers and the zero point and
    # scale apply to its (BN, BM) result; else the tile spans groups and is dequantized per word.
    # With FOLD, INTO says where they go: 0, both on the dot's result (the zero point as z * sum(x));
    # 1, the zero point subtracted in the tile, the scale on the result; 2, both in the tile, so the
    # dot accumulates into acc itself (no per-tile work on the accumulator, no sum of x).
    # PTX (4 bits, FOLD, bf16 x): the integers come as bf16 128 + q, so the zero point is z + 128.
    # kw: words per row, an argument so that its divisibility aligns the rows for the compiler;
    # EVEN_N / EVEN_K: no partial weight tile along N / K, so the weight loads need no masks.
    PER: tl.constexpr = 32 // BITS
    BLOCK_K: tl.constexpr = BLOCK_W * PER
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    n_mask, m_mask = n < N, m < M
    n64 = n.to(tl.int64)
    if SWAP:
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for w0 in range(pid_k * BLOCK_W, kw, BLOCK_W * SPLIT_K):
        w = w0 + tl.arange(0, BLOCK_W)  # (BW,)
        if EVEN_N and EVEN_K:
            words = tl.load(qw_ptr + n64[:, None] * kw + w[None, :])
        else:
            words = tl.load(qw_ptr + n64[:, None] * kw + w[None, :], mask=n_mask[:, None] & (w < kw)[None, :], other=0)
        k = w0 * PER + tl.arange(0, BLOCK_K)  # (BK,)
        x = tl.load(x_ptr + m.to(tl.int64)[:, None] * stride_xm + k[None, :],
                    mask=m_mask[:, None] & (k < K)[None, :], other=0.0)  # (BM, BK)
        if FOLD:
            at = n64 * NG + (w0 * PER) // G  # (BN,)
            if EVEN_N:
                s = tl.load(s_ptr + at).to(tl.float32)
                z = tl.load(z_ptr + at).to(tl.float32)
            else:
                s = tl.load(s_ptr + at, mask=n_mask, other=0.0).to(tl.float32)
                z = tl.load(z_ptr + at, mask=n_mask, other=0.0).to(tl.float32)
            if PTX:
                q = _weight_tile_bf16(words, BLOCK_N, BLOCK_W)  # (BN, BK) bf16 128 + q
                z += 128.0
                zt = tl.broadcast_to(z.to(tl.bfloat16)[:, None], (BLOCK_N, BLOCK_K))  # (BN, BK)
                if INTO == 1:
                    q = _minus_zero_bf16(q, zt)  # (BN, BK) bf16 q - z
                elif INTO == 2:
                    q = _dequantized_bf16(q, zt, tl.broadcast_to(s.to(tl.bfloat16)[:, None], (BLOCK_N, BLOCK_K)))
            else:
                q = weight_tile(words, s, z, BLOCK_N, BLOCK_W, BITS, True)  # (BN, BK) integers
                if INTO == 1:
                    q = q - z[:, None]
                elif INTO == 2:
                    q = (q - z[:, None]) * s[:, None]  # (BN, BK) weights
        else:
            at = n64[:, None] * NG + ((w * PER) // G)[None, :]  # (BN, BW)
            g_mask = n_mask[:, None] & (w < kw)[None, :]
            s = tl.load(s_ptr + at, mask=g_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + at, mask=g_mask, other=0.0).to(tl.float32)
            q = weight_tile(words, s, z * s, BLOCK_N, BLOCK_W, BITS, False)  # (BN, BK) weights
        if IEEE:
            xt = tl.trans(x.to(tl.float32))  # (BK, BM)
        else:
            q = q.to(x.dtype)  # integers are exact in 16-bit floats; weights round as a bf16 linear's
            xt = tl.trans(x)
        if FOLD and INTO != 2:  # the product of the tile, then its zero point and scale
            d = _tile_dot(q, xt, None, SWAP, IEEE)
            if INTO == 1:
                acc += d * (s[:, None] if SWAP else s[None, :])
            else:
                xsum = tl.sum(x.to(tl.float32), 1)  # (BM,)
                if SWAP:
                    acc += (d - z[:, None] * xsum[None, :]) * s[:, None]
                else:
                    acc += (d - xsum[:, None] * z[None, :]) * s[None, :]
        else:  # the tile holds the weights: the dot accumulates in acc
            acc = _tile_dot(q, xt, acc, SWAP, IEEE)
    if HAS_BIAS:
        bias = tl.where(pid_k == 0, tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32), 0.0)
        if SWAP:
            acc += bias[:, None]
        else:
            acc += bias[None, :]
    if SWAP:
        idx = m[None, :] * N + n[:, None]  # (BN, BM)
        mask = n_mask[:, None] & m_mask[None, :]
    else:
        idx = m[:, None] * N + n[None, :]  # (BM, BN)
        mask = m_mask[:, None] & n_mask[None, :]
    tile = pid_m * tl.num_programs(0) + pid_n
    finish_tile(acc, out_ptr + idx, mask, idx, ws_ptr, cnt_ptr, tile, pid_k, M * N, SPLIT_K)


def int_weight_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    group_size: int, bits: int, bias: torch.Tensor | None = None,
                    block_m: int = 16, block_n: int = 64, block_k: int = 64, split_k: int = 1,
                    swap: bool = False, ptx: bool = False, num_warps: int = 4, num_stages: int = 3,
                    into: str = "acc") -> torch.Tensor:
    """x (M, K) -> (M, N) in x's dtype. swap: the weight tile is the dot's left operand; ptx: 4-bit
    tiles inside one group are unpacked by inline PTX (bf16 x, on a GPU; else the plain unpack);
    into (tiles inside one group): where the zero point and the scale go, "acc" both on each tile's
    product, "zero" the zero point into the weight tile, "tile" both into it (the kernel's INTO)."""
    n, k = check_layout(x, qweight, scales, zeros, group_size, bits)
    fit = tile_groups(block_k, group_size, k, bits)
    assert fit is not None, f"a {block_k}-channel tile cuts groups of {group_size}"
    assert into in _INTO, f"into is one of {', '.join(_INTO)}, got {into!r}"
    m = x.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m), split_k)
    _gemm_kernel[grid](
        x, qweight, scales, zeros, bias if bias is not None else scales, out,
        workspace(split_k, m * n, x.device), counters(x.device, grid[0] * grid[1]),
        m, n, k, qweight.shape[1], scales.shape[1], x.stride(0), G=min(group_size, k),
        EVEN_N=n % block_n == 0, EVEN_K=qweight.shape[1] % (block_k * bits // 32) == 0, BITS=bits, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_W=block_k * bits // 32, SPLIT_K=split_k,
        HAS_BIAS=bias is not None, SWAP=swap, FOLD=fit[0] == 1,
        PTX=ptx and bits == 4 and fit[0] == 1 and x.dtype == torch.bfloat16 and not INTERPRETED,
        # NOTE(q4): Triton's CPU interpreter multiplies bf16 dot operands as raw bits: float32 there.
        IEEE=x.dtype == torch.float32 or INTERPRETED, INTO=_INTO[into] if fit[0] == 1 else 0,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


_INTO = {"acc": 0, "zero": 1, "tile": 2}
