"""x as the packed-pair GEMV takes it (genfleet_kernels/int_weight_gemv_f16x2.py): float16 pairs per chunk.

A chunk is two words' channels (16): its largest |x| sets a power of two m that scales the chunk
into [1, 2) (FOLD: [2**14, 2**15)), so bf16 values are exact in float16 and no product or partial
sum of a chunk overflows. Plane j of word w is the float16 pair x[8w + j] / m (low half) and
x[8w + j + 4] / m (high half), j odd: also / 16 (they meet 16 q). With the pairs come the factor
that undoes the scaling (m, with FOLD times 2**24 for the subnormal weights) and the chunk's sum of
x (FOLD: the zero point's correction).

`chunk_pairs` is that arithmetic on 16 values in registers, shared by two users: `x_pairs`, one
small launch writing the planes of the whole row to memory, and the GEMV itself, which reads x's
raw 16-bit words (`load_x_word`, 16 bytes a word) and makes the pairs of its own tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.pdl import launch, wait_then_release

__all__ = ["CHUNK", "chunk_pairs", "load_x_word", "x_floats", "x_pairs"]

CHUNK = 16  # channels that share one power-of-two scale and one float16 accumulator (two words)


@triton.jit
def _pack(lo, hi, PTX: tl.constexpr):
    # Two float32 -> one int32 holding float16(lo) in its low half and float16(hi) in its high half.
    if PTX:
        return tl.inline_asm_elementwise(asm="cvt.rn.f16x2.f32 $0, $2, $1;", constraints="=r,f,f",
                                         args=[lo, hi], dtype=tl.int32, is_pure=True, pack=1)
    lo16 = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hi16 = hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
    return lo16 | (hi16 << 16)


@triton.jit
def _amax(a, b, c, d, e, f, g, h):
    return tl.maximum(tl.maximum(tl.maximum(tl.abs(a), tl.abs(b)), tl.maximum(tl.abs(c), tl.abs(d))),
                      tl.maximum(tl.maximum(tl.abs(e), tl.abs(f)), tl.maximum(tl.abs(g), tl.abs(h))))


@triton.jit
def chunk_pairs(e0, e1, e2, e3, e4, e5, e6, e7, o0, o1, o2, o3, o4, o5, o6, o7, FOLD: tl.constexpr,
                PTX: tl.constexpr):
    # The 8 float32 values of a chunk's even word (e) and of its odd word (o), elementwise over any
    # shape -> the planes of the two words (4 int32 each), the factor that undoes the scaling, and
    # the chunk's sum of x.
    amax = tl.maximum(_amax(e0, e1, e2, e3, e4, e5, e6, e7), _amax(o0, o1, o2, o3, o4, o5, o6, o7))
    e = amax.to(tl.int32, bitcast=True) & 0x7F800000  # the exponent bits of the chunk's max
    e = tl.where(e == 0, 127 << 23, tl.minimum(tl.maximum(e, 16 << 23), 240 << 23))
    top: tl.constexpr = 14 if FOLD else 0  # the exponent the chunk's max gets
    inv = ((254 + top - (e >> 23)) << 23).to(tl.float32, bitcast=True)  # 2**top / m, exact
    inv16 = inv * 0.0625
    undo = (e + ((10 << 23) if FOLD else 0)).to(tl.float32, bitcast=True)  # m * 2**(24 - top)
    pe0 = _pack(e0 * inv, e4 * inv, PTX)
    pe1 = _pack(e1 * inv16, e5 * inv16, PTX)
    pe2 = _pack(e2 * inv, e6 * inv, PTX)
    pe3 = _pack(e3 * inv16, e7 * inv16, PTX)
    po0 = _pack(o0 * inv, o4 * inv, PTX)
    po1 = _pack(o1 * inv16, o5 * inv16, PTX)
    po2 = _pack(o2 * inv, o6 * inv, PTX)
    po3 = _pack(o3 * inv16, o7 * inv16, PTX)
    total = ((e0 + e1) + (e2 + e3)) + ((e4 + e5) + (e6 + e7)) + (((o0 + o1) + (o2 + o3)) + ((o4 + o5) + (o6 + o7)))
    return pe0, pe1, pe2, pe3, po0, po1, po2, po3, undo, total


@triton.jit
def load_x_word(ptrs, mask, MASKED: tl.constexpr, PTX: tl.constexpr):
    # The 8 16-bit values of a word's channels (ptrs = x + 8w) as 4 int32, values 2i and 2i + 1 in
    # the low and high half of the i-th. On a GPU one 16-byte load in the layout of its pointers
    # (x's rows must be 16-byte aligned); masked lanes read 0.
    if PTX:
        if MASKED:
            return tl.inline_asm_elementwise(
                asm="{ .reg .pred p; setp.ne.b32 p, $5, 0; mov.b32 $0, 0; mov.b32 $1, 0; mov.b32 $2, 0; "
                    "mov.b32 $3, 0; @p ld.global.nc.v4.b32 {$0, $1, $2, $3}, [$4]; }",
                constraints="=r,=r,=r,=r,l,r", args=[ptrs, mask.to(tl.int32)], dtype=(tl.int32,) * 4,
                is_pure=True, pack=1)
        return tl.inline_asm_elementwise(
            asm="ld.global.nc.v4.b32 {$0, $1, $2, $3}, [$4];", constraints="=r,=r,=r,=r,l", args=[ptrs],
            dtype=(tl.int32,) * 4, is_pure=True, pack=1)
    r0 = _bits(ptrs, mask, 0)
    r1 = _bits(ptrs, mask, 2)
    r2 = _bits(ptrs, mask, 4)
    r3 = _bits(ptrs, mask, 6)
    return r0, r1, r2, r3


@triton.jit
def _bits(ptrs, mask, i: tl.constexpr):
    lo = tl.load(ptrs + i, mask=mask, other=0.0).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hi = tl.load(ptrs + i + 1, mask=mask, other=0.0).to(tl.int16, bitcast=True).to(tl.int32)
    return lo | (hi << 16)


@triton.jit
def x_floats(r, X_BF16: tl.constexpr):
    # The two 16-bit floats of an int32 (low half, high half) as float32.
    if X_BF16:
        return (r << 16).to(tl.float32, bitcast=True), (r & -65536).to(tl.float32, bitcast=True)
    lo = r.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    hi = (r >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def _x_pairs_kernel(x_ptr, xp_ptr, xs_ptr, kw, FOLD: tl.constexpr, BLOCK_C: tl.constexpr, PDL: tl.constexpr):
    # x (K,) -> xp (4, kw) int32: the planes; xs (2, kw) float32: the factor that undoes the scaling
    # and the chunk's sum of x, for both words of the chunk.
    wait_then_release(PDL)
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)  # (BC,) chunks
    c_mask = c * 2 < kw
    ev = x_ptr + c * 16  # CHUNK channels a chunk
    e0 = tl.load(ev + 0, mask=c_mask, other=0.0).to(tl.float32)
    e1 = tl.load(ev + 1, mask=c_mask, other=0.0).to(tl.float32)
    e2 = tl.load(ev + 2, mask=c_mask, other=0.0).to(tl.float32)
    e3 = tl.load(ev + 3, mask=c_mask, other=0.0).to(tl.float32)
    e4 = tl.load(ev + 4, mask=c_mask, other=0.0).to(tl.float32)
    e5 = tl.load(ev + 5, mask=c_mask, other=0.0).to(tl.float32)
    e6 = tl.load(ev + 6, mask=c_mask, other=0.0).to(tl.float32)
    e7 = tl.load(ev + 7, mask=c_mask, other=0.0).to(tl.float32)
    o0 = tl.load(ev + 8, mask=c_mask, other=0.0).to(tl.float32)
    o1 = tl.load(ev + 9, mask=c_mask, other=0.0).to(tl.float32)
    o2 = tl.load(ev + 10, mask=c_mask, other=0.0).to(tl.float32)
    o3 = tl.load(ev + 11, mask=c_mask, other=0.0).to(tl.float32)
    o4 = tl.load(ev + 12, mask=c_mask, other=0.0).to(tl.float32)
    o5 = tl.load(ev + 13, mask=c_mask, other=0.0).to(tl.float32)
    o6 = tl.load(ev + 14, mask=c_mask, other=0.0).to(tl.float32)
    o7 = tl.load(ev + 15, mask=c_mask, other=0.0).to(tl.float32)
    pe0, pe1, pe2, pe3, po0, po1, po2, po3, undo, total = chunk_pairs(
        e0, e1, e2, e3, e4, e5, e6, e7, o0, o1, o2, o3, o4, o5, o6, o7, FOLD, False)
    we = c * 2  # the even word of each chunk
    tl.store(xp_ptr + we, pe0, mask=c_mask)
    tl.store(xp_ptr + kw + we, pe1, mask=c_mask)
    tl.store(xp_ptr + 2 * kw + we, pe2, mask=c_mask)
    tl.store(xp_ptr + 3 * kw + we, pe3, mask=c_mask)
    tl.store(xp_ptr + we + 1, po0, mask=c_mask)
    tl.store(xp_ptr + kw + we + 1, po1, mask=c_mask)
    tl.store(xp_ptr + 2 * kw + we + 1, po2, mask=c_mask)
    tl.store(xp_ptr + 3 * kw + we + 1, po3, mask=c_mask)
    tl.store(xs_ptr + we, undo, mask=c_mask)
    tl.store(xs_ptr + we + 1, undo, mask=c_mask)
    tl.store(xs_ptr + kw + we, total, mask=c_mask)
    tl.store(xs_ptr + kw + we + 1, total, mask=c_mask)


def x_pairs(x: torch.Tensor, fold: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x (1, K), K a multiple of 16 -> the planes (4, K / 8) int32 and the chunk factors and sums
    (2, K / 8) float32."""
    k = x.shape[1]
    assert k % CHUNK == 0, f"K = {k}: a multiple of {CHUNK} expected"
    kw = k // 8
    xp = torch.empty(4, kw, dtype=torch.int32, device=x.device)
    xs = torch.empty(2, kw, dtype=torch.float32, device=x.device)
    _x_pairs_kernel[(triton.cdiv(kw // 2, 128),)](x, xp, xs, kw, FOLD=fold, BLOCK_C=128, **launch())
    return xp, xs
