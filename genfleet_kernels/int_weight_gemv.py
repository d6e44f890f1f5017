"""`int_weight_gemv`: one row of x times the integer weight-only layout (genfleet_kernels/int_weight.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.int_weight import check_layout, tile_groups, value
from genfleet_kernels.split_k import counters, finish_tile, workspace

__all__ = ["int_weight_gemv"]


def _gemv(
    x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr, N, kw, NG, magic,
    G: tl.constexpr, BITS: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, WORDS: tl.constexpr,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
    PLANES: tl.constexpr,
):
    # PLANES: x_ptr is x_planes' float32 (P + 1, kw) instead of x, read through pointers of the
    # words' own shape, so that x shares the words' register layout with 16-byte loads too.
    # A tile is (BLOCK_N rows, GROUPS groups, WORDS words of each): one scale and zero point per
    # (row, group), applied once per word after its values met x. kw: words per row (an argument,
    # so that its divisibility makes the row starts 16-byte aligned to the compiler). EVEN_N /
    # EVEN_K: no partial tile along N / K, so no masks.
    PER: tl.constexpr = 32 // BITS
    HALF: tl.constexpr = PER // 2
    TILE_W: tl.constexpr = GROUPS * WORDS
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    n_mask = n < N
    n64 = n.to(tl.int64)
    rows = qw_ptr + n64[:, None, None] * kw  # (BN, 1, 1)
    gi = tl.arange(0, GROUPS)  # (NGT,)
    offs = gi[:, None] * WORDS + tl.arange(0, WORDS)[None, :]  # (NGT, WPG) word offsets in a tile
    zero = (n64 * 0)[:, None, None]  # (BN, 1, 1): gives x's pointers the words' shape
    acc = tl.zeros([BLOCK_N, GROUPS, WORDS], tl.float32)
    for w0 in range(pid_k * TILE_W, kw, TILE_W * SPLIT_K):
        w = w0 + offs  # (NGT, WPG)
        w_mask = w < kw
        grp = (w0 * PER) // G + gi  # (NGT,)
        at = n64[:, None] * NG + grp[None, :]  # (BN, NGT)
        if EVEN_N and EVEN_K:
            words = tl.load(rows + w[None, :, :])
            s = tl.load(s_ptr + at).to(tl.float32)
            z = tl.load(z_ptr + at).to(tl.float32)
        else:
            words = tl.load(rows + w[None, :, :], mask=n_mask[:, None, None] & w_mask[None, :, :], other=0)
            g_mask = n_mask[:, None] & (grp < NG)[None, :]
            s = tl.load(s_ptr + at, mask=g_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + at, mask=g_mask, other=0.0).to(tl.float32)
        hi = words.to(tl.uint32, bitcast=True) >> 16  # logical: no sign to extend
        part = tl.zeros([BLOCK_N, GROUPS, WORDS], tl.float32)
        xsum = tl.zeros([GROUPS, WORDS], tl.float32)
        for i in tl.static_range(PER):
            if i < HALF:
                v = value(words, i, BITS, magic)
            else:
                v = value(hi, i - HALF, BITS, magic)
            if PLANES:
                if EVEN_K:
                    xs = tl.load(x_ptr + i * kw + w[None, :, :] + zero)  # (BN, NGT, WPG), already scaled
                else:
                    xs = tl.load(x_ptr + i * kw + w[None, :, :] + zero, mask=w_mask[None, :, :], other=0.0)
                part += v * xs
            else:
                if EVEN_K:
                    xi = tl.load(x_ptr + w * PER + i).to(tl.float32)  # (NGT, WPG)
                else:
                    xi = tl.load(x_ptr + w * PER + i, mask=w_mask, other=0.0).to(tl.float32)
                xsum += xi
                part += v * (xi * (1.0 / (1 << (BITS * (i % HALF)))))[None, :, :]
        if PLANES:
            xsum3 = tl.load(x_ptr + PER * kw + w[None, :, :] + zero, mask=w_mask[None, :, :], other=0.0)
        else:
            xsum3 = xsum[None, :, :]
        acc += (part - z[:, :, None] * xsum3) * s[:, :, None]
    y = tl.sum(tl.sum(acc, 2), 1)  # (BN,)
    if HAS_BIAS:
        bias = tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
        y += tl.where(pid_k == 0, bias, 0.0)
    finish_tile(y, out_ptr + n, n_mask, n, ws_ptr, cnt_ptr, pid_n, pid_k, N, SPLIT_K)


@triton.jit
def _x_planes_kernel(x_ptr, xp_ptr, kw, BITS: tl.constexpr, BLOCK_W: tl.constexpr):
    # xp[i, w] = x[w * P + i] * 2**-(BITS * (i % (P / 2))) (the scale `value` needs), xp[P, w] = the
    # word's sum of x.
    PER: tl.constexpr = 32 // BITS
    HALF: tl.constexpr = PER // 2
    w = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
    w_mask = w < kw
    xsum = tl.zeros([BLOCK_W], tl.float32)
    for i in tl.static_range(PER):
        xi = tl.load(x_ptr + w * PER + i, mask=w_mask, other=0.0).to(tl.float32)
        xsum += xi
        tl.store(xp_ptr + i * kw + w, xi * (1.0 / (1 << (BITS * (i % HALF)))), mask=w_mask)
    tl.store(xp_ptr + PER * kw + w, xsum, mask=w_mask)


# Two builds of one kernel. With kw's divisibility known the words load 16 bytes at a time, but x's
# values (8 channels apart) then arrive in another register layout and are exchanged through shared
# memory (barriers) every tile; without it every load is 4 bytes wide and shares one layout. With
# planes (PLANES) the wide build reads x from a float32 copy laid out like the words (one small
# launch before), so nothing is exchanged and the loads stay wide.
_gemv_kernel = triton.jit(do_not_specialize=["magic"])(_gemv)
_gemv_kernel_narrow = triton.jit(do_not_specialize=["kw", "magic"])(_gemv)


def int_weight_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    group_size: int, bits: int, bias: torch.Tensor | None = None, block_n: int = 8,
                    block_w: int = 64, split_k: int = 1, num_warps: int = 4, num_stages: int = 3,
                    wide: bool = True, planes: bool = False) -> torch.Tensor:
    """x (1, K) -> (1, N) in x's dtype; a tile of block_w words per row either lies in one group
    or holds whole groups. wide: 16-byte weight loads (see the two builds above); planes: x goes
through x_planes first (wide loads)."""
    assert x.shape[0] == 1, f"one row expected, got {tuple(x.shape)}"
    n, k = check_layout(x, qweight, scales, zeros, group_size, bits)
    fit = tile_groups(block_w * 32 // bits, group_size, k, bits)
    assert fit is not None, f"a {block_w}-word tile cuts groups of {group_size}"
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(n, block_n), split_k)
    kw = qweight.shape[1]
    xs = x
    if planes:
        xs = torch.empty(32 // bits + 1, kw, dtype=torch.float32, device=x.device)
        _x_planes_kernel[(triton.cdiv(kw, 256),)](x, xs, kw, BITS=bits, BLOCK_W=256)
    (_gemv_kernel if wide or planes else _gemv_kernel_narrow)[grid](
        xs, qweight, scales, zeros, bias if bias is not None else scales, out,
        workspace(split_k, n, x.device), counters(x.device, grid[0]), n, kw, scales.shape[1], 0x4B000000,
        G=min(group_size, k), BITS=bits, BLOCK_N=block_n, GROUPS=fit[0], WORDS=fit[1], SPLIT_K=split_k,
        HAS_BIAS=bias is not None, EVEN_N=n % block_n == 0, EVEN_K=kw % block_w == 0, PLANES=planes,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
