"""Fused mixture-of-experts MLP: every expert's gate/up GEMM in one launch, then every down GEMM in one.

Each token is routed to top_k experts: a (token, slot) pair p = token * top_k + slot. The pairs
are sorted by expert and each expert's run padded to a multiple of BLOCK_M (`align_by_expert`),
so a program's BLOCK_M rows all multiply by one expert's weights: program (row block, column
block) reads its expert from `block_expert` and its pairs from `sorted_pairs` (padding = P, masked).
The sorting runs on the device with shapes fixed by (tokens, top_k, experts) alone: no host sync,
so the whole layer replays inside a CUDA graph. The first GEMM reads token rows (p // top_k) of x
and writes each pair's gate|up row; the second reads the activated pair rows, scales each by its
routing weight and writes float32 rows that a sum over the top_k slots turns into the output
(at decode sizes its K is split over programs that add into those rows: DOWN_SPLIT_K).

Quantized experts (genfleet_kernels/reference.py `QuantizedExperts`) are the same kernel under the
constexpr WEIGHTS: FP8 tiles are converted to the activations' dtype in registers and each
output column's scale multiplies the accumulator once at the end; integer tiles are unpacked as
genfleet_kernels/int_weight.py does, and a K tile (never straddling two groups) adds
s * (x . q - z * sum(x)) for its group's zero points and scales, as int_weight_gemm does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genfleet_kernels.int_weight import tile_fits, unpack_rows
from genfleet_kernels.paged_kv import dot_precision
from genfleet_kernels.reference import QuantizedExperts
from genfleet_kernels.silu_and_mul import silu_and_mul

__all__ = ["fused_moe", "align_by_expert"]

# WEIGHTS: how a program reads its expert's weights.
DENSE = tl.constexpr(0)  # (E, N, K) in the activations' dtype
FP8 = tl.constexpr(1)  # (E, N, K) e4m3, a float32 scale per (expert, output)
INT = tl.constexpr(2)  # (E, K / P, N) packed integers, zero points and scales per (expert, group, output)

# A decode step of a few tokens runs the down GEMM on few programs (the experts touched times
# H / BLOCK_N: 128 for Mixtral at one token, on a card of 132 SMs), each looping over the whole
# FFN: its K is split over DOWN_SPLIT_K programs that add into the float32 output.
DOWN_SPLIT_K = 4
DOWN_SPLIT_PAIRS = 16  # (token, expert) pairs up to which the down GEMM splits K


@triton.jit
def _moe_gemm_kernel(
    a_ptr, w_ptr, s_ptr, z_ptr, c_ptr, pairs_ptr, block_expert_ptr, routing_ptr,
    num_pairs, num_experts, n_out, k_in, group_size,
    stride_am, stride_we, stride_wn, stride_se, stride_cm,
    ROWS_PER_A: tl.constexpr, SCALE_BY_ROUTING: tl.constexpr, WEIGHTS: tl.constexpr, BITS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block).to(tl.int64)
    if expert >= num_experts:  # a block past the last expert's run: nothing to do
        return
    pairs = tl.load(pairs_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))  # (M,)
    valid = pairs < num_pairs
    a_rows = (pairs // ROWS_PER_A).to(tl.int64)  # (M,): the token's row, or the pair's own
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (N,)
    n_mask = n < n_out
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(tl.program_id(2) * BLOCK_K, k_in, BLOCK_K * SPLIT_K):
        k = k0 + tl.arange(0, BLOCK_K)  # (K,)
        k_mask = k < k_in
        a = tl.load(a_ptr + a_rows[:, None] * stride_am + k[None, :], mask=valid[:, None] & k_mask[None, :],
                    other=0.0)  # (M, K)
        if WEIGHTS == INT:
            q = unpack_rows(w_ptr + expert * stride_we, k, n, k_in, n_out, BITS)  # (K, N) integer-valued floats
            group = expert * stride_se + (k0 // group_size) * n_out + n  # (N,)
            s = tl.load(s_ptr + group, mask=n_mask, other=0.0).to(tl.float32)  # (N,)
            z = tl.load(z_ptr + group, mask=n_mask, other=0.0).to(tl.float32)  # (N,)
            d = tl.dot(a, q.to(a.dtype), input_precision=DOT_PRECISION)  # (M, N); q is exact in 16-bit floats
            a_sum = tl.sum(a.to(tl.float32), 1)  # (M,)
            acc += (d - a_sum[:, None] * z[None, :]) * s[None, :]
        else:
            w = tl.load(w_ptr + expert * stride_we + n[None, :] * stride_wn + k[:, None],
                        mask=k_mask[:, None] & n_mask[None, :], other=0.0)  # (K, N): rows of W are outputs
            acc += tl.dot(a, w.to(a.dtype), input_precision=DOT_PRECISION)
    if WEIGHTS == FP8:
        acc = acc * tl.load(s_ptr + expert * stride_se + n, mask=n_mask, other=0.0)[None, :]
    if SCALE_BY_ROUTING:
        acc = acc * tl.load(routing_ptr + pairs, mask=valid, other=0.0)[:, None]
    c_ptrs = c_ptr + pairs.to(tl.int64)[:, None] * stride_cm + n[None, :]
    if SPLIT_K == 1:
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=valid[:, None] & n_mask[None, :])
    else:  # float32 output, zeroed: each K split adds its part (the scales above are linear)
        tl.atomic_add(c_ptrs, acc, mask=valid[:, None] & n_mask[None, :])


def align_by_expert(
    topk_ids: torch.Tensor,  # (T, top_k) int: each pair's expert
    num_experts: int,
    block_m: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # (num_blocks * block_m,) int32, (num_blocks,) int32
    """Pairs sorted by expert, each expert's run padded to block_m with the sentinel P, and the
    expert of every row block (num_experts for the blocks past the end). num_blocks bounds the
    padded runs for any routing: ceil(P / block_m) + num_experts."""
    flat = topk_ids.reshape(-1).long()  # (P,)
    num_pairs = flat.numel()
    num_blocks = triton.cdiv(num_pairs, block_m) + num_experts
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # (E,); bincount would sync for its size
    padded = (counts + block_m - 1) // block_m * block_m  # (E,)
    padded_end = padded.cumsum(0)  # (E,)
    order = torch.argsort(flat, stable=True)  # (P,): pairs by expert
    expert_of = flat[order]  # (P,)
    rank = torch.arange(num_pairs, device=flat.device) - (counts.cumsum(0) - counts)[expert_of]  # (P,)
    dest = (padded_end - padded)[expert_of] + rank  # (P,)
    sorted_pairs = torch.full((num_blocks * block_m,), num_pairs, dtype=torch.int32, device=flat.device)
    sorted_pairs[dest] = order.to(torch.int32)
    starts = torch.arange(num_blocks, device=flat.device) * block_m  # (num_blocks,)
    block_expert = torch.searchsorted(padded_end, starts, right=True).to(torch.int32)  # (num_blocks,)
    return sorted_pairs, block_expert


def fused_moe(
    x: torch.Tensor,  # (T, H)
    w13: torch.Tensor | QuantizedExperts,  # (E, 2I, H): each expert's gate rows, then its up rows
    w2: torch.Tensor | QuantizedExperts,  # (E, H, I)
    topk_weights: torch.Tensor,  # (T, top_k) float32: routing weights
    topk_ids: torch.Tensor,  # (T, top_k) int: routed experts
    down_split_k: int | None = None,  # K splits of the down GEMM; None: DOWN_SPLIT_K at decode sizes
) -> torch.Tensor:  # (T, H) in x's dtype
    num_tokens, hidden = x.shape
    num_experts, two_inter, _ = _check(w13, x.dtype)
    top_k = topk_ids.shape[1]
    assert x.stride(1) == 1, "row-major activations"
    assert _dims(w13)[2] == hidden and _check(w2, x.dtype) == (num_experts, hidden, two_inter // 2), \
        (_dims(w13), _dims(w2))
    assert topk_weights.shape == topk_ids.shape == (num_tokens, top_k)
    num_pairs = num_tokens * top_k
    if num_pairs == 0:
        return torch.zeros_like(x)
    block_m = 16 if num_pairs <= 64 * num_experts else 64  # few pairs per expert: less padding
    sorted_pairs, block_expert = align_by_expert(topk_ids, num_experts, block_m)
    routing = topk_weights.reshape(-1).float().contiguous()  # (P,)
    gate_up = torch.empty(num_pairs, two_inter, dtype=x.dtype, device=x.device)  # (P, 2I)
    _gemm(x, w13, gate_up, sorted_pairs, block_expert, routing, num_pairs, top_k, False, block_m)
    act = silu_and_mul(gate_up)  # (P, I)
    if down_split_k is None:
        down_split_k = DOWN_SPLIT_K if num_pairs <= DOWN_SPLIT_PAIRS and two_inter // 2 >= 4096 else 1
    alloc = torch.empty if down_split_k == 1 else torch.zeros
    down = alloc(num_pairs, hidden, dtype=torch.float32, device=x.device)  # (P, H)
    _gemm(act, w2, down, sorted_pairs, block_expert, routing, num_pairs, 1, True, block_m, down_split_k)
    return down.view(num_tokens, top_k, hidden).sum(1).to(x.dtype)  # (T, H)


def _dims(w: torch.Tensor | QuantizedExperts) -> tuple[int, int, int]:  # (E, N, K)
    return w.dims() if isinstance(w, QuantizedExperts) else (w.shape[0], w.shape[1], w.shape[2])


def _check(w: torch.Tensor | QuantizedExperts, dtype: torch.dtype) -> tuple[int, int, int]:
    if isinstance(w, QuantizedExperts):
        assert w.weight.is_contiguous() and w.scale.is_contiguous(), "contiguous expert stacks"
        e, n, k = w.dims()
        if w.is_fp8:
            assert w.scale.shape == (e, n) and w.scale.dtype == torch.float32, tuple(w.scale.shape)
        else:
            assert w.weight.dtype == torch.int32 and w.bits in (4, 8) and w.zeros is not None
            assert w.scale.shape == w.zeros.shape == (e, -(-k // w.group_size), n), (tuple(w.scale.shape), e, k, n)
    else:
        assert w.is_contiguous() and w.dtype == dtype, (w.dtype, dtype)
    return _dims(w)


def _gemm(a: torch.Tensor, w: torch.Tensor | QuantizedExperts, c: torch.Tensor, sorted_pairs: torch.Tensor,
          block_expert: torch.Tensor, routing: torch.Tensor, num_pairs: int, rows_per_a: int, scale_by_routing: bool,
          block_m: int, split_k: int = 1) -> None:
    num_experts, n_out, k_in = _dims(w)
    block_n = min(64, triton.next_power_of_2(n_out))
    block_k = min(64, max(16, triton.next_power_of_2(k_in)))
    if isinstance(w, torch.Tensor):
        weights, scale, zeros, kind, group_size, bits = w, w, w, DENSE, k_in, 16  # the dense kernel reads no scales
    elif w.is_fp8:
        weights, scale, zeros, kind, group_size, bits = w.weight, w.scale, w.scale, FP8, k_in, 8
    else:
        assert w.zeros is not None
        weights, scale, zeros, kind, group_size, bits = w.weight, w.scale, w.zeros, INT, w.group_size, w.bits
        if group_size < k_in:  # a tile inside one group
            block_k = min(block_k, group_size)
        assert block_k >= 16 and tile_fits(block_k, group_size, k_in), f"groups of {group_size} over {k_in} channels"
    grid = (block_expert.shape[0], triton.cdiv(n_out, block_n), split_k)
    _moe_gemm_kernel[grid](
        a, weights, scale, zeros, c, sorted_pairs, block_expert, routing,
        num_pairs, num_experts, n_out, k_in, group_size,
        a.stride(0), weights.stride(0), weights.stride(1), scale.stride(0), c.stride(0),
        ROWS_PER_A=rows_per_a, SCALE_BY_ROUTING=scale_by_routing, WEIGHTS=kind.value, BITS=bits,
        DOT_PRECISION=dot_precision(a.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k,
        num_warps=4, num_stages=2,
    )
