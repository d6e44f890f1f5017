"""`int_weight_gemv_f16x2`: one 16-bit row of x times the 4-bit weight-only layout, on packed half pairs.

The float32 GEMV (kernels/int_weight_gemv.py) spends about three instructions per weight value on
the unpack and its multiply-add and is instruction-bound at one row. Here every instruction works
on two values. An AND of a word with 0x000F000F (0x00F000F0; after a shift by 8 for values 2, 3)
leaves values i and i + 4 of the word in the two halves of a register, one packed FMA meets them
with x, and the zero point is handled in one of two ways (FOLD; on an H200 FOLD was faster on
every Llama-3.1-8B shape, docs/perf.md):
- FOLD off: OR-ed into 0x64006400 the halves are the float16 1024 + q (1024 + 16 q), and one
  packed subtract of 1024 + z (1024 + 16 z) makes them q - z (16 (q - z)) exactly: per word
  (8 values) 5 unpack, 4 subtract and 4 FMA instructions.
- FOLD on: the halves are taken as they are, the float16 subnormals q * 2**-24 (16 q * 2**-24),
  x meets them scaled up by 2**14 so the products are normal float16 again, and the zero point
  becomes one correction per chunk, z * sum(x): 5 unpack and 4 FMA instructions per word.

x goes through `x_pairs` first (one small launch): float16 planes laid out like the words, so
plane j of word w holds x[8w + j] and x[8w + j + 4] as a pair (j odd: divided by 16, to meet
16 q), each chunk of two words (16 channels) scaled by a power of two so that its largest |x|
lies in [1, 2) (FOLD: [2**14, 2**15)): bf16 values are then exact in float16 (11 bits) and no
product or partial sum of a chunk overflows. The two words of a chunk accumulate in one float16
pair (16 products), whose sum becomes float32, is multiplied back by the chunk's power of two
and by its group scale. Against the float32 reference on an H200 (bf16 x and output) the
relative error was 1.8e-3, the float32 GEMV's 1.6-1.7e-3: mostly the bf16 output's rounding.

PTX on a GPU; under Triton's CPU interpreter the same steps in float32 from the same planes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.int_weight import INTERPRETED, check_layout, tile_groups
from kernels.split_k import counters, finish_tile, workspace

__all__ = ["int_weight_gemv_f16x2", "x_pairs"]

CHUNK = 16  # channels that share one power-of-two scale and one float16 accumulator (two words)


@triton.jit
def _x_pairs_kernel(x_ptr, xp_ptr, xs_ptr, K, kw, FOLD: tl.constexpr, BLOCK_C: tl.constexpr):
    # x (K,) -> xp (4, kw) int32: plane j of word w = float16 x[8w + j] / m | x[8w + j + 4] / m << 16
    # (j odd: also / 16), m the chunk's power of two (with FOLD times 2**-14); xs (2, kw) float32:
    # the factor that undoes it (m, with FOLD times 2**24 for the subnormal weights) and the
    # chunk's sum of x, for both words of the chunk.
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)  # (BC,) chunks
    w = c[:, None] * 2 + tl.arange(0, 2)[None, :]  # (BC, 2) words
    w_mask = w < kw
    amax = tl.zeros([BLOCK_C, 2], tl.float32)
    total = tl.zeros([BLOCK_C, 2], tl.float32)
    for i in tl.static_range(8):
        xi = tl.load(x_ptr + w * 8 + i, mask=w_mask & (w * 8 + i < K), other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(xi))
        total += xi
    e = tl.max(amax, 1).to(tl.int32, bitcast=True) & 0x7F800000  # (BC,) the exponent bits of the chunk's max
    e = tl.where(e == 0, 127 << 23, tl.minimum(tl.maximum(e, 16 << 23), 240 << 23))
    top: tl.constexpr = 14 if FOLD else 0  # the exponent the chunk's max gets
    inv = ((254 + top - (e >> 23)) << 23).to(tl.float32, bitcast=True)[:, None]  # 2**top / m, exact
    undo = (e + ((10 << 23) if FOLD else 0)).to(tl.float32, bitcast=True)  # m * 2**(24 - top)
    for j in tl.static_range(4):
        lo = tl.load(x_ptr + w * 8 + j, mask=w_mask & (w * 8 + j < K), other=0.0).to(tl.float32) * inv
        hi = tl.load(x_ptr + w * 8 + j + 4, mask=w_mask & (w * 8 + j + 4 < K), other=0.0).to(tl.float32) * inv
        if j % 2 == 1:
            lo = lo * 0.0625
            hi = hi * 0.0625
        lo16 = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        hi16 = hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
        tl.store(xp_ptr + j * kw + w, lo16 | (hi16 << 16), mask=w_mask)
    tl.store(xs_ptr + w, tl.broadcast_to(undo[:, None], (BLOCK_C, 2)), mask=w_mask)
    chunk_sum = tl.sum(total, 1)[:, None]
    tl.store(xs_ptr + kw + w, tl.broadcast_to(chunk_sum, (BLOCK_C, 2)), mask=w_mask)


def x_pairs(x: torch.Tensor, fold: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x (1, K), K a multiple of 16 -> the planes (4, K / 8) int32 and the chunk factors and sums
    (2, K / 8) float32."""
    k = x.shape[1]
    assert k % CHUNK == 0, f"K = {k}: a multiple of {CHUNK} expected"
    kw = k // 8
    xp = torch.empty(4, kw, dtype=torch.int32, device=x.device)
    xs = torch.empty(2, kw, dtype=torch.float32, device=x.device)
    _x_pairs_kernel[(triton.cdiv(kw // 2, 128),)](x, xp, xs, k, kw, FOLD=fold, BLOCK_C=128)
    return xp, xs


@triton.jit
def _half(p, HIGH: tl.constexpr):
    # The float16 in the low (high) half of an int32, as float32.
    bits = (p >> 16) if HIGH else p
    return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _word_ref(word, x0, x1, x2, x3, z, FOLD: tl.constexpr):
    # What the PTX computes for one word, in float32: sum_j (q_j - z) x_j over the pairs of the
    # planes (FOLD: q_j * 2**-24, the zero point left to the caller).
    total = tl.zeros(word.shape, tl.float32)
    for j in tl.static_range(4):
        xj = x0 if j == 0 else (x1 if j == 1 else (x2 if j == 2 else x3))
        f = 16.0 if j % 2 == 1 else 1.0
        q_lo = ((word >> (4 * j)) & 15).to(tl.float32)
        q_hi = ((word >> (16 + 4 * j)) & 15).to(tl.float32)
        if FOLD:
            f = f * 5.9604644775390625e-08  # 2**-24
        else:
            q_lo -= z
            q_hi -= z
        total += (q_lo * _half(xj, False) + q_hi * _half(xj, True)) * f
    return total


_UNPACK = """
        lop3.b32 v0, $1, 0x000f000f, MAGIC, 0xea;
        lop3.b32 v1, $1, 0x00f000f0, MAGIC, 0xea;
        shr.u32 h, $1, 8;
        lop3.b32 v2, h, 0x000f000f, MAGIC, 0xea;
        lop3.b32 v3, h, 0x00f000f0, MAGIC, 0xea;
        lop3.b32 u0, $2, 0x000f000f, MAGIC, 0xea;
        lop3.b32 u1, $2, 0x00f000f0, MAGIC, 0xea;
        shr.u32 h, $2, 8;
        lop3.b32 u2, h, 0x000f000f, MAGIC, 0xea;
        lop3.b32 u3, h, 0x00f000f0, MAGIC, 0xea;
"""
_SUBTRACT = """
        sub.rn.f16x2 v0, v0, $11;
        sub.rn.f16x2 v1, v1, $12;
        sub.rn.f16x2 v2, v2, $11;
        sub.rn.f16x2 v3, v3, $12;
        sub.rn.f16x2 u0, u0, $11;
        sub.rn.f16x2 u1, u1, $12;
        sub.rn.f16x2 u2, u2, $11;
        sub.rn.f16x2 u3, u3, $12;
"""
_DOT = """
        mul.rn.f16x2 acc, v0, $3;
        fma.rn.f16x2 acc, v1, $4, acc;
        fma.rn.f16x2 acc, v2, $5, acc;
        fma.rn.f16x2 acc, v3, $6, acc;
        fma.rn.f16x2 acc, u0, $7, acc;
        fma.rn.f16x2 acc, u1, $8, acc;
        fma.rn.f16x2 acc, u2, $9, acc;
        fma.rn.f16x2 acc, u3, $10, acc;
        mov.b32 {lo, hi}, acc;
        add.rn.f16 lo, lo, hi;
        cvt.f32.f16 $0, lo;
"""
_DECLARE = """
        .reg .b32 h, v0, v1, v2, v3, u0, u1, u2, u3, acc;
        .reg .f16 lo, hi;
"""
# Register $0: the float32 result; $1, $2: the words; $3-$6, $7-$10: their planes; $11, $12: the
# float16 pairs 1024 + z, 1024 + 16 z (FOLD: unused, and the AND-OR ORs nothing in).
_ASM_SUB = tl.constexpr("{" + _DECLARE + _UNPACK.replace("MAGIC", "0x64006400") + _SUBTRACT + _DOT + "}")
_ASM_FOLD = tl.constexpr("{" + _DECLARE + _UNPACK.replace("MAGIC", "0x0") + _DOT + "}")


@triton.jit
def _chunk_dot(we, wo, xe0, xe1, xe2, xe3, xo0, xo1, xo2, xo3, c1, c16, z, FOLD: tl.constexpr, PTX: tl.constexpr):
    # The two words of a chunk (we, wo) against their planes: sum (q - z) x as float32 (FOLD:
    # sum q x * 2**-24), before the chunk's factor and the group scale.
    if not PTX:
        return _word_ref(we, xe0, xe1, xe2, xe3, z, FOLD) + _word_ref(wo, xo0, xo1, xo2, xo3, z, FOLD)
    return tl.inline_asm_elementwise(
        asm=_ASM_FOLD if FOLD else _ASM_SUB, constraints="=r,r,r,r,r,r,r,r,r,r,r,r,r",
        args=[we, wo, xe0, xe1, xe2, xe3, xo0, xo1, xo2, xo3, c1, c16], dtype=tl.float32, is_pure=True, pack=1,
    )


@triton.jit
def _load_16(ptrs, mask, PTX: tl.constexpr):
    # A 16-bit float per pointer, as float32. On a GPU through PTX: a load that the compiler takes
    # as it is, in the layout of its pointers (a tl.load of the scales would be given a layout of
    # its own and its values exchanged through shared memory every tile).
    if not PTX:
        return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    bits = tl.inline_asm_elementwise(
        asm="{ .reg .pred p; setp.ne.b32 p, $2, 0; mov.b16 $0, 0; @p ld.global.nc.b16 $0, [$1]; }",
        constraints="=h,l,r", args=[ptrs, mask.to(tl.int32)], dtype=tl.int16, is_pure=True, pack=1)
    return bits.to(ptrs.dtype.element_ty, bitcast=True).to(tl.float32)


@triton.jit
def _load_x4(ptrs):
    # x's planes, four words a 16-byte load, through PTX: the compiler takes the asm as a pure
    # function of its pointers, so the rows of a thread, whose pointers are equal, share one load
    # (a tl.load per row is not merged; one load broadcast to the rows is exchanged through
    # shared memory). Four consecutive elements of a thread (the words' 16-byte layout) per instance.
    return tl.inline_asm_elementwise(
        asm="ld.global.nc.v4.b32 {$0, $1, $2, $3}, [$4];", constraints="=r,=r,=r,=r,l,l,l,l",
        args=[ptrs], dtype=tl.int32, is_pure=True, pack=4)


@triton.jit
def _pairs(t, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, WORDS: tl.constexpr):
    # (BN, NGT, WPG) -> the even and the odd words, (BN, NGT, WPG / 2) each.
    return tl.split(tl.reshape(t, (t.shape[0], GROUPS, WORDS // 2, 2)))


@triton.jit
def _gemv_f16x2_kernel(
    xp_ptr, xs_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr, N, kw, NG,
    G: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, WORDS: tl.constexpr,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, FOLD: tl.constexpr,
    PTX: tl.constexpr, X4: tl.constexpr,
):
    # As kernels/int_weight_gemv.py's tile, (BLOCK_N rows, GROUPS groups, WORDS words of each),
    # loaded as (rows, words) and reshaped. X4: x's planes through _load_x4 (PTX, whole tiles, rows
    # of a multiple of 16 words and groups of a multiple of 4: then the words load 16 bytes at a
    # time, four to a thread, and x's loads take the same layout).
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    TILE_W: tl.constexpr = GROUPS * WORDS
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    n_mask = n < N
    n64 = n.to(tl.int64)
    rows = qw_ptr + n64[:, None] * kw  # (BN, 1)
    gi = tl.arange(0, GROUPS)  # (NGT,)
    offs = tl.arange(0, TILE_W)  # (TW,)
    shape3: tl.constexpr = (BLOCK_N, GROUPS, WORDS)
    acc = tl.zeros([BLOCK_N, GROUPS, WORDS // 2], tl.float32)
    for w0 in range(pid_k * TILE_W, kw, TILE_W * SPLIT_K):
        # Loads of (rows, words) tiles, reshaped to groups in registers: each thread then holds
        # several rows of the same words, which share their loads of x.
        w = w0 + offs  # (TW,)
        w_mask = w < kw
        grp = (w0 * 8) // G + gi  # (NGT,)
        at = n64[:, None, None] * NG + grp[None, :, None]  # (BN, NGT, 1)
        if EVEN_N and EVEN_K:
            words = tl.load(rows + w[None, :])
        else:
            words = tl.load(rows + w[None, :], mask=n_mask[:, None] & w_mask[None, :], other=0)
        words = tl.reshape(words, shape3)
        g_ok = (n_mask[:, None, None] & (grp < NG)[None, :, None]) | (EVEN_N and EVEN_K)
        s = _load_16(s_ptr + at, g_ok, PTX)
        z = _load_16(z_ptr + at, g_ok, PTX)
        x1w = w[None, :]  # (1, TW)
        if X4:
            x0 = _load_x4(xp_ptr + x1w)
            x1 = _load_x4(xp_ptr + kw + x1w)
            x2 = _load_x4(xp_ptr + 2 * kw + x1w)
            x3 = _load_x4(xp_ptr + 3 * kw + x1w)
            xs = _load_x4(xs_ptr + x1w).to(tl.float32, bitcast=True)
            xsum = _load_x4(xs_ptr + kw + x1w).to(tl.float32, bitcast=True)
        else:
            xm = w_mask[None, :]
            x0 = tl.load(xp_ptr + x1w, mask=xm, other=0)
            x1 = tl.load(xp_ptr + kw + x1w, mask=xm, other=0)
            x2 = tl.load(xp_ptr + 2 * kw + x1w, mask=xm, other=0)
            x3 = tl.load(xp_ptr + 3 * kw + x1w, mask=xm, other=0)
            xs = tl.load(xs_ptr + x1w, mask=xm, other=0.0)
            xsum = tl.load(xs_ptr + kw + x1w, mask=xm, other=0.0)
        one3: tl.constexpr = (1, GROUPS, WORDS)
        x0 = tl.reshape(x0, one3)
        x1 = tl.reshape(x1, one3)
        x2 = tl.reshape(x2, one3)
        x3 = tl.reshape(x3, one3)
        xs = tl.reshape(xs, one3)
        xsum = tl.reshape(xsum, one3)
        # The per-(row, group) values broadcast to the words' shape and split as they are, so that
        # they arrive in the layout of the split words (no exchange through shared memory).
        full: tl.constexpr = (BLOCK_N, GROUPS, WORDS)
        zh, _ = _pairs(tl.broadcast_to(z, full), BLOCK_N, GROUPS, WORDS)
        if FOLD:
            c1 = zh.to(tl.int32, bitcast=True)  # unused by the PTX
            c16 = c1
        else:
            zi = z.to(tl.int32)
            c1, _ = _pairs(tl.broadcast_to((0x6400 + zi) * 0x10001, full), BLOCK_N, GROUPS, WORDS)
            c16, _ = _pairs(tl.broadcast_to((0x6400 + 16 * zi) * 0x10001, full), BLOCK_N, GROUPS, WORDS)
        sh, _ = _pairs(tl.broadcast_to(s, full), BLOCK_N, GROUPS, WORDS)
        we, wo = _pairs(words, BLOCK_N, GROUPS, WORDS)
        xe0, xo0 = _pairs(x0, BLOCK_N, GROUPS, WORDS)
        xe1, xo1 = _pairs(x1, BLOCK_N, GROUPS, WORDS)
        xe2, xo2 = _pairs(x2, BLOCK_N, GROUPS, WORDS)
        xe3, xo3 = _pairs(x3, BLOCK_N, GROUPS, WORDS)
        m, _ = _pairs(xs, BLOCK_N, GROUPS, WORDS)
        part = _chunk_dot(we, wo, xe0, xe1, xe2, xe3, xo0, xo1, xo2, xo3, c1, c16, zh, FOLD, PTX) * m
        if FOLD:
            xsum, _ = _pairs(xsum, BLOCK_N, GROUPS, WORDS)
            part -= zh * xsum
        acc += part * sh
    y = tl.sum(tl.sum(acc, 2), 1)  # (BN,)
    if HAS_BIAS:
        bias = tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
        y += tl.where(pid_k == 0, bias, 0.0)
    finish_tile(y, out_ptr + n, n_mask, n, ws_ptr, cnt_ptr, pid_n, pid_k, N, SPLIT_K)


def int_weight_gemv_f16x2(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                          group_size: int, bits: int = 4, bias: torch.Tensor | None = None, block_n: int = 16,
                          block_w: int = 128, split_k: int = 1, num_warps: int = 4,
                          num_stages: int = 3, fold: bool = True) -> torch.Tensor:
    """x (1, K) bf16 / fp16, K a multiple of 16, 4-bit weights -> (1, N) in x's dtype; a tile of
    block_w words per row (even) either lies in one group or holds whole groups; fold: the zero
    point as a correction per chunk, not a subtract per value pair (the module's header)."""
    assert x.shape[0] == 1, f"one row expected, got {tuple(x.shape)}"
    assert bits == 4 and x.dtype in (torch.bfloat16, torch.float16), (bits, x.dtype)
    n, k = check_layout(x, qweight, scales, zeros, group_size, bits)
    fit = tile_groups(block_w * 8, group_size, k, bits)
    assert fit is not None and fit[1] % 2 == 0, f"a {block_w}-word tile cuts groups of {group_size} (or chunks)"
    xp, xs = x_pairs(x, fold)
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(n, block_n), split_k)
    kw = qweight.shape[1]
    _gemv_f16x2_kernel[grid](
        xp, xs, qweight, scales, zeros, bias if bias is not None else scales, out,
        workspace(split_k, n, x.device), counters(x.device, grid[0]), n, kw, scales.shape[1],
        G=min(group_size, k), BLOCK_N=block_n, GROUPS=fit[0], WORDS=fit[1], SPLIT_K=split_k,
        HAS_BIAS=bias is not None, EVEN_N=n % block_n == 0, EVEN_K=kw % block_w == 0,
        FOLD=fold, PTX=not INTERPRETED, X4=not INTERPRETED and kw % 16 == 0 and kw % block_w == 0 and fit[1] % 4 == 0,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
