"""The fused MoE kernel (one launch per projection for all experts) against the per-expert reference."""

from __future__ import annotations

import pytest
import torch

from tests.genfleet_kernels.conftest import ON_GPU, assert_close

pytest.importorskip("triton")

from genfleet_kernels import reference as ref  # noqa: E402
from genfleet_kernels.fused_moe import align_by_expert, fused_moe  # noqa: E402

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])


def _routing(tokens: int, experts: int, top_k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(tokens, experts, generator=gen)
    weights, ids = torch.softmax(logits, -1).topk(top_k, dim=-1)  # (T, k) each, distinct experts per token
    return weights / weights.sum(-1, keepdim=True), ids


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("tokens", "experts", "top_k", "hidden", "inter"),
                         [(1, 4, 2, 64, 32), (13, 8, 2, 48, 80), (40, 6, 3, 32, 64)]
                         + ([(700, 8, 2, 4096, 1792)] if ON_GPU else []))
def test_fused_moe_matches_the_per_expert_loop(
    tokens: int, experts: int, top_k: int, hidden: int, inter: int, dtype: torch.dtype, device: torch.device
) -> None:
    # One token (most experts idle), an odd count, and top-3 routing over widths that are not
    # multiples of the kernel's tiles.
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, hidden, generator=gen).to(device, dtype)
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=gen) / hidden**0.5).to(device, dtype)
    w2 = (torch.randn(experts, hidden, inter, generator=gen) / inter**0.5).to(device, dtype)
    weights, ids = _routing(tokens, experts, top_k, gen)
    got = fused_moe(x, w13, w2, weights.to(device), ids.to(device))
    want = ref.fused_moe(x, w13, w2, weights.to(device), ids.to(device))
    assert_close(got, want, dtype, 4)
    # The down GEMM's K split over programs that add into its float32 output (decode sizes).
    assert_close(fused_moe(x, w13, w2, weights.to(device), ids.to(device), down_split_k=3), want, dtype, 4)


def _fp8_experts(w: torch.Tensor) -> ref.QuantizedExperts:  # (E, N, K) -> e4m3 with a scale per (expert, row)
    weight, scale = ref.quantize_fp8_rows(w.reshape(-1, w.shape[2]))  # (E * N, K), (E * N, 1)
    return ref.QuantizedExperts(weight.view(w.shape), scale.view(w.shape[:2]), None, 0, 8)


def _int_experts(experts: int, n: int, k: int, group: int, bits: int, gen: torch.Generator,
                 scale_dtype: torch.dtype) -> ref.QuantizedExperts:
    groups = -(-k // group)
    q = torch.randint(0, 1 << bits, (experts, n, k), generator=gen)  # (E, N, K)
    zeros = torch.randint(0, 1 << bits, (experts, groups, n), generator=gen).to(scale_dtype)  # (E, NG, N)
    scales = (torch.rand(experts, groups, n, generator=gen) * 4 / ((1 << bits) * k**0.5)).to(scale_dtype)
    packed = ref.pack_int32(q, bits).transpose(1, 2).contiguous()  # (E, K / P, N)
    return ref.QuantizedExperts(packed, scales, zeros, group, bits)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("tokens", "experts", "top_k", "hidden", "inter"), [(1, 4, 2, 64, 32), (21, 6, 3, 48, 80)]
                         + ([(300, 8, 2, 4096, 1792)] if ON_GPU else []))
def test_fused_moe_over_fp8_experts(tokens: int, experts: int, top_k: int, hidden: int, inter: int,
                                    dtype: torch.dtype, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, hidden, generator=gen).to(device, dtype)
    w13 = _fp8_experts((torch.randn(experts, 2 * inter, hidden, generator=gen) / hidden**0.5).to(device))
    w2 = _fp8_experts((torch.randn(experts, hidden, inter, generator=gen) / inter**0.5).to(device))
    weights, ids = (t.to(device) for t in _routing(tokens, experts, top_k, gen))
    want = ref.fused_moe(x, w13, w2, weights, ids)
    assert_close(fused_moe(x, w13, w2, weights, ids), want, dtype, 4)
    assert_close(fused_moe(x, w13, w2, weights, ids, down_split_k=2), want, dtype, 4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("tokens", "experts", "top_k", "hidden", "inter", "group", "bits"),
                         [(1, 4, 2, 64, 32, 32, 4), (19, 6, 2, 128, 64, 64, 4), (7, 4, 3, 64, 48, 16, 8),
                          (5, 3, 2, 64, 40, 64, 4)]  # one group per row of w2 (I = 40 < 64)
                         + ([(300, 8, 2, 4096, 1792, 128, 4)] if ON_GPU else []))
def test_fused_moe_over_integer_experts(tokens: int, experts: int, top_k: int, hidden: int, inter: int, group: int,
                                        bits: int, dtype: torch.dtype, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, hidden, generator=gen).to(device, dtype)
    scale_dtype = torch.float32 if dtype == torch.float32 else torch.float16
    w13 = _int_experts(experts, 2 * inter, hidden, group, bits, gen, scale_dtype)
    w2 = _int_experts(experts, hidden, inter, min(group, inter), bits, gen, scale_dtype)
    w13, w2 = (ref.QuantizedExperts(*(t.to(device) if isinstance(t, torch.Tensor) else t for t in w)) for w in (w13, w2))
    weights, ids = (t.to(device) for t in _routing(tokens, experts, top_k, gen))
    want = ref.fused_moe(x, w13, w2, weights, ids)
    assert_close(fused_moe(x, w13, w2, weights, ids), want, dtype, 4)
    assert_close(fused_moe(x, w13, w2, weights, ids, down_split_k=2), want, dtype, 4)


def test_align_by_expert_pads_each_experts_run() -> None:
    ids = torch.tensor([[2, 0], [2, 1], [0, 2]])  # pairs 0..5 -> experts 2, 0, 2, 1, 0, 2
    pairs, block_expert = align_by_expert(ids, 4, 4)
    assert pairs.shape == (4 * (2 + 4),) and block_expert.shape == (6,)
    sentinel = 6
    assert pairs[:4].tolist() == [1, 4, sentinel, sentinel]  # expert 0
    assert pairs[4:8].tolist() == [3, sentinel, sentinel, sentinel]  # expert 1
    assert pairs[8:12].tolist() == [0, 2, 5, sentinel]  # expert 2
    assert (pairs[12:] == sentinel).all()
    assert block_expert.tolist() == [0, 1, 2, 4, 4, 4]  # expert 3 has no run; past the end = E


@pytest.mark.gpu
def test_fused_moe_replays_in_a_cuda_graph_with_new_routing() -> None:
    # Captured once, replayed after the routing changed in place: the grouping by expert runs on
    # the device, so the replay follows the new experts (no host sync, no shape of the routing).
    gen = torch.Generator().manual_seed(5)
    tokens, experts, top_k, hidden, inter = 24, 8, 2, 128, 64
    x = torch.randn(tokens, hidden, generator=gen).cuda().half()
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=gen) / hidden**0.5).cuda().half()
    w2 = (torch.randn(experts, hidden, inter, generator=gen) / inter**0.5).cuda().half()
    weights, ids = (t.cuda() for t in _routing(tokens, experts, top_k, gen))
    fused_moe(x, w13, w2, weights, ids)  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_moe(x, w13, w2, weights, ids)
    new_weights, new_ids = _routing(tokens, experts, top_k, gen)
    weights.copy_(new_weights)
    ids.copy_(new_ids)
    graph.replay()
    assert_close(out, ref.fused_moe(x, w13, w2, weights, ids), torch.float16, 4)
