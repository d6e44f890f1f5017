"""`int_weight_gemv_f16x2`: one 16-bit row of x times the 4-bit weight-only layout, on packed half pairs.

The float32 GEMV (genfleet_kernels/int_weight_gemv.py) spends about three instructions per weight value on
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

x's pairs (genfleet_kernels/int_weight_x_pairs.py): float16 planes laid out like the words, so plane j of
word w holds x[8w + j] and x[8w + j + 4] as a pair (j odd: divided by 16, to meet 16 q), each chunk
of two words (16 channels) scaled by a power of two so that its largest |x| lies in [1, 2) (FOLD:
[2**14, 2**15)): bf16 values are then exact in float16 and no product or partial sum of a chunk
overflows. Either `x_pairs` makes them first (one small launch, about 1.6 µs: a fifth of the
qkv and o calls) and the kernel loads them, or (FUSED) the kernel reads x's raw 16-bit values
(16 bytes a word, from L2) and makes the pairs of each tile in registers: once per thread for all
the rows it holds, so the wide tiles (128 words a warp: every row of a word in one thread) pay
least. The two words of a chunk accumulate in one float16 pair (16 products), whose sum becomes
float32, is multiplied back by the chunk's power of two and by its group scale. Against the
float32 reference on an H200 (bf16 x and output) the relative error was 1.8e-3, the float32
GEMV's 1.6-1.7e-3: mostly the bf16 output's rounding. The pairs are the same either way, and so
is the result, bit for bit (tests/genfleet_kernels/test_int_weight.py).

AHEAD: each program issues the next tile's loads (words, scales, zero points, with FUSED x) before
this tile's arithmetic, so two tiles are in flight per program instead of one (the scales' and
x's loads are inline PTX, which the compiler's pipelining does not move).

PTX on a GPU; under Triton's CPU interpreter the same steps in float32 from the same planes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.int_weight import INTERPRETED, check_layout, tile_groups
from genfleet_kernels.int_weight_x_pairs import CHUNK, chunk_pairs, load_x_word, x_floats, x_pairs
from genfleet_kernels.pdl import launch, wait_then_release
from genfleet_kernels.split_k import counters, finish_tile, workspace

__all__ = ["int_weight_gemv_f16x2"]

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
def _weight_tile(rows, s_ptr, z_ptr, n64, n_mask, w0, kw, NG, G: tl.constexpr, BLOCK_N: tl.constexpr,
                 GROUPS: tl.constexpr, WORDS: tl.constexpr, EVEN: tl.constexpr, PTX: tl.constexpr):
    # The (BN, NGT, WPG) words of the tile starting at word w0, and its (BN, NGT, 1) scales and zero
    # points. Loads of (rows, words) tiles, reshaped to groups in registers: each thread then holds
    # several rows of the same words, which share their loads of x.
    w = w0 + tl.arange(0, GROUPS * WORDS)  # (TW,)
    grp = (w0 * 8) // G + tl.arange(0, GROUPS)  # (NGT,)
    at = n64[:, None, None] * NG + grp[None, :, None]  # (BN, NGT, 1)
    if EVEN:
        words = tl.load(rows + w[None, :])
    else:
        words = tl.load(rows + w[None, :], mask=n_mask[:, None] & (w < kw)[None, :], other=0)
    words = tl.reshape(words, (BLOCK_N, GROUPS, WORDS))
    g_ok = (n_mask[:, None, None] & (grp < NG)[None, :, None]) | EVEN
    return words, _load_16(s_ptr + at, g_ok, PTX), _load_16(z_ptr + at, g_ok, PTX)


@triton.jit
def _x_tile(x_ptr, w0, kw, GROUPS: tl.constexpr, WORDS: tl.constexpr, EVEN_K: tl.constexpr, PTX: tl.constexpr):
    # x's raw 16-bit values for the tile starting at word w0: 4 int32 for each even and each odd
    # word of a chunk, (1, NGT, WPG / 2) each, in the layout the split words take.
    w = w0 + tl.arange(0, GROUPS * WORDS)  # (TW,)
    at_e, at_o = _pairs(tl.reshape((w * 8)[None, :], (1, GROUPS, WORDS)), 1, GROUPS, WORDS)  # (1, NGT, WPG / 2)
    mask_e = at_e < kw * 8
    mask_o = at_o < kw * 8
    e0, e1, e2, e3 = load_x_word(x_ptr + at_e, mask_e, not EVEN_K, PTX)
    o0, o1, o2, o3 = load_x_word(x_ptr + at_o, mask_o, not EVEN_K, PTX)
    return e0, e1, e2, e3, o0, o1, o2, o3


@triton.jit
def _tile_pairs(e0, e1, e2, e3, o0, o1, o2, o3, X_BF16: tl.constexpr, FOLD: tl.constexpr, PTX: tl.constexpr):
    # A tile's raw x (_x_tile) -> its planes, the factor that undoes the scaling, the chunk sums.
    a0, a1 = x_floats(e0, X_BF16)
    a2, a3 = x_floats(e1, X_BF16)
    a4, a5 = x_floats(e2, X_BF16)
    a6, a7 = x_floats(e3, X_BF16)
    b0, b1 = x_floats(o0, X_BF16)
    b2, b3 = x_floats(o1, X_BF16)
    b4, b5 = x_floats(o2, X_BF16)
    b6, b7 = x_floats(o3, X_BF16)
    return chunk_pairs(a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7, FOLD, PTX)


@triton.jit
def _gemv_f16x2_kernel(
    x_ptr, xp_ptr, xs_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr, N, kw, NG,
    G: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, WORDS: tl.constexpr,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, FOLD: tl.constexpr,
    PTX: tl.constexpr, X4: tl.constexpr, FUSED: tl.constexpr, X_BF16: tl.constexpr, AHEAD: tl.constexpr,
    PDL: tl.constexpr,
):
    # As genfleet_kernels/int_weight_gemv.py's tile, (BLOCK_N rows, GROUPS groups, WORDS words of each),
    # loaded as (rows, words) and reshaped. FUSED: x's pairs made here from x (x_ptr, bf16 when
    # X_BF16, else float16) for each tile, no x_pairs launch before; else read from xp_ptr / xs_ptr,
    # with X4 through _load_x4 (PTX, whole tiles, rows of a multiple of 16 words and groups of a
    # multiple of 4: then the words load 16 bytes at a time, four to a thread, and x's loads take
    # the same layout). AHEAD: the next tile's loads are issued before this tile's arithmetic, so
    # a program keeps two tiles of weights in flight (the last one re-reads the final tile).
    # PDL (genfleet_kernels/pdl.py): the weights are never written on the device, so AHEAD's first tile is
    # loaded before the wait for the previous kernel, whose tail it overlaps; x, the workspace and
    # the counters only after it. NOTE(int4): x's loads are pure inline PTX, which nothing orders
    # after the wait but the compiler's choice; Triton 3.9's sm_90 PTX keeps them after it (read
    # off the GPU), and tests/genfleet_kernels/test_int_weight.py compares the bits with PDL on and off.
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    TILE_W: tl.constexpr = GROUPS * WORDS
    EVEN: tl.constexpr = EVEN_N and EVEN_K
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    n_mask = n < N
    n64 = n.to(tl.int64)
    rows = qw_ptr + n64[:, None] * kw  # (BN, 1)
    step = TILE_W * SPLIT_K
    start = pid_k * TILE_W
    last = kw - TILE_W  # a whole tile's start (EVEN_K), where a look-ahead past the end lands
    acc = tl.zeros([BLOCK_N, GROUPS, WORDS // 2], tl.float32)
    if AHEAD:
        words, s, z = _weight_tile(rows, s_ptr, z_ptr, n64, n_mask, start, kw, NG, G, BLOCK_N, GROUPS, WORDS,
                                   EVEN, PTX)
    wait_then_release(PDL)
    if AHEAD:
        if FUSED:
            re0, re1, re2, re3, ro0, ro1, ro2, ro3 = _x_tile(x_ptr, start, kw, GROUPS, WORDS, EVEN_K, PTX)
    for w0 in range(start, kw, step):
        if AHEAD:
            nxt = w0 + step
            if EVEN_K:
                nxt = tl.minimum(nxt, last)
            n_words, n_s, n_z = _weight_tile(rows, s_ptr, z_ptr, n64, n_mask, nxt, kw, NG, G, BLOCK_N, GROUPS,
                                             WORDS, EVEN, PTX)
            if FUSED:
                n_re0, n_re1, n_re2, n_re3, n_ro0, n_ro1, n_ro2, n_ro3 = _x_tile(x_ptr, nxt, kw, GROUPS, WORDS,
                                                                                 EVEN_K, PTX)
        else:
            words, s, z = _weight_tile(rows, s_ptr, z_ptr, n64, n_mask, w0, kw, NG, G, BLOCK_N, GROUPS, WORDS,
                                       EVEN, PTX)
            if FUSED:
                re0, re1, re2, re3, ro0, ro1, ro2, ro3 = _x_tile(x_ptr, w0, kw, GROUPS, WORDS, EVEN_K, PTX)
        if FUSED:
            xe0, xe1, xe2, xe3, xo0, xo1, xo2, xo3, m, xsum = _tile_pairs(re0, re1, re2, re3, ro0, ro1, ro2, ro3,
                                                                          X_BF16, FOLD, PTX)
        else:
            w = w0 + tl.arange(0, TILE_W)  # (TW,)
            x1w = w[None, :]  # (1, TW)
            if X4:
                x0 = _load_x4(xp_ptr + x1w)
                x1 = _load_x4(xp_ptr + kw + x1w)
                x2 = _load_x4(xp_ptr + 2 * kw + x1w)
                x3 = _load_x4(xp_ptr + 3 * kw + x1w)
                xs = _load_x4(xs_ptr + x1w).to(tl.float32, bitcast=True)
                xsum = _load_x4(xs_ptr + kw + x1w).to(tl.float32, bitcast=True)
            else:
                xm = (w < kw)[None, :]
                x0 = tl.load(xp_ptr + x1w, mask=xm, other=0)
                x1 = tl.load(xp_ptr + kw + x1w, mask=xm, other=0)
                x2 = tl.load(xp_ptr + 2 * kw + x1w, mask=xm, other=0)
                x3 = tl.load(xp_ptr + 3 * kw + x1w, mask=xm, other=0)
                xs = tl.load(xs_ptr + x1w, mask=xm, other=0.0)
                xsum = tl.load(xs_ptr + kw + x1w, mask=xm, other=0.0)
            one3: tl.constexpr = (1, GROUPS, WORDS)
            xe0, xo0 = _pairs(tl.reshape(x0, one3), BLOCK_N, GROUPS, WORDS)
            xe1, xo1 = _pairs(tl.reshape(x1, one3), BLOCK_N, GROUPS, WORDS)
            xe2, xo2 = _pairs(tl.reshape(x2, one3), BLOCK_N, GROUPS, WORDS)
            xe3, xo3 = _pairs(tl.reshape(x3, one3), BLOCK_N, GROUPS, WORDS)
            m, _ = _pairs(tl.reshape(xs, one3), BLOCK_N, GROUPS, WORDS)
            xsum, _ = _pairs(tl.reshape(xsum, one3), BLOCK_N, GROUPS, WORDS)
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
        part = _chunk_dot(we, wo, xe0, xe1, xe2, xe3, xo0, xo1, xo2, xo3, c1, c16, zh, FOLD, PTX) * m
        if FOLD:
            part -= zh * xsum
        acc += part * sh
        if AHEAD:
            words, s, z = n_words, n_s, n_z
            if FUSED:
                re0, re1, re2, re3, ro0, ro1, ro2, ro3 = n_re0, n_re1, n_re2, n_re3, n_ro0, n_ro1, n_ro2, n_ro3
    y = tl.sum(tl.sum(acc, 2), 1)  # (BN,)
    if HAS_BIAS:
        bias = tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
        y += tl.where(pid_k == 0, bias, 0.0)
    finish_tile(y, out_ptr + n, n_mask, n, ws_ptr, cnt_ptr, pid_n, pid_k, N, SPLIT_K)


def int_weight_gemv_f16x2(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                          group_size: int, bits: int = 4, bias: torch.Tensor | None = None, block_n: int = 16,
                          block_w: int = 128, split_k: int = 1, num_warps: int = 4, num_stages: int = 3,
                          fold: bool = True, fused: bool = False, ahead: bool = False) -> torch.Tensor:
    """x (1, K) bf16 / fp16, K a multiple of 16, 4-bit weights -> (1, N) in x's dtype; a tile of
    block_w words per row (even) either lies in one group or holds whole groups; fold: the zero
    point as a correction per chunk, not a subtract per value pair (the module's header); fused:
    x's pairs made in the kernel (no x_pairs launch); ahead: the next tile's loads in flight while
    this one is computed."""
    assert x.shape[0] == 1, f"one row expected, got {tuple(x.shape)}"
    assert bits == 4 and x.dtype in (torch.bfloat16, torch.float16), (bits, x.dtype)
    n, k = check_layout(x, qweight, scales, zeros, group_size, bits)
    fit = tile_groups(block_w * 8, group_size, k, bits)
    assert fit is not None and fit[1] % 2 == 0, f"a {block_w}-word tile cuts groups of {group_size} (or chunks)"
    assert k % CHUNK == 0, f"K = {k}: a multiple of {CHUNK} expected"
    kw = qweight.shape[1]
    if fused:
        if x.data_ptr() % 16:  # the kernel reads a word's x in one 16-byte load
            x = x.clone()
        xp, xs = x, x  # unused
    else:
        xp, xs = x_pairs(x, fold)
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(n, block_n), split_k)
    _gemv_f16x2_kernel[grid](
        x, xp, xs, qweight, scales, zeros, bias if bias is not None else scales, out,
        workspace(split_k, n, x.device), counters(x.device, grid[0]), n, kw, scales.shape[1],
        G=min(group_size, k), BLOCK_N=block_n, GROUPS=fit[0], WORDS=fit[1], SPLIT_K=split_k,
        HAS_BIAS=bias is not None, EVEN_N=n % block_n == 0, EVEN_K=kw % block_w == 0,
        FOLD=fold, PTX=not INTERPRETED, X4=not INTERPRETED and kw % 16 == 0 and kw % block_w == 0 and fit[1] % 4 == 0,
        FUSED=fused, X_BF16=x.dtype == torch.bfloat16, AHEAD=ahead, num_warps=num_warps, num_stages=num_stages,
        **launch(),
    )
    return out
