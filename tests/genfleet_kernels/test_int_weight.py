"""Integer weight-only kernels against genfleet_kernels/reference.py: 4 and 8 bits, groups 32/64/128 and per
channel, K not a multiple of the tile, N tails, bias, split K (summed in the same launch), swap."""

from __future__ import annotations

import pytest
import torch

from genfleet_kernels import reference
from tests.genfleet_kernels.conftest import ON_GPU, assert_close

pytest.importorskip("triton")

from genfleet_kernels.int_weight_dequant import int_weight_dequant  # noqa: E402
from genfleet_kernels.int_weight_gemm import int_weight_gemm  # noqa: E402
from genfleet_kernels.int_weight_gemv import int_weight_gemv  # noqa: E402
from genfleet_kernels.int_weight_gemv_f16x2 import int_weight_gemv_f16x2  # noqa: E402


def _layout(n: int, k: int, group: int, bits: int, device: torch.device, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    groups = -(-k // group)
    q = torch.randint(0, 2**bits, (n, k), generator=g)
    qweight = reference.pack_int32(q, bits).to(device)  # (N, K / P)
    scales = (torch.rand(n, groups, generator=g) * 0.02 + 0.001).half().to(device)
    zeros = torch.randint(0, 2**bits, (n, groups), generator=g).half().to(device)
    return qweight, scales, zeros


# (N, K, group, bits): K = 192 leaves a partial last group of 128 and a partial 128-channel tile;
# N = 40 / 33 leave partial output tiles; group = K is one group per row (per channel).
SHAPES = [(8, 64, 32, 4), (40, 192, 128, 4), (24, 256, 64, 4), (16, 96, 96, 4), (16, 128, 64, 8), (33, 192, 192, 8)]
if ON_GPU:
    SHAPES += [(6144, 4096, 128, 4), (4096, 14336, 64, 4)]


def _case(n: int, k: int, group: int, bits: int, dtype: torch.dtype, device: torch.device):  # type: ignore[no-untyped-def]
    """The packed layout and a bias for (N, K, group, bits)."""
    return _layout(n, k, group, bits, device), torch.randn(n).to(device, dtype)


def _want(x: torch.Tensor, layout, group: int, bits: int, bias: torch.Tensor):  # type: ignore[no-untyped-def]
    want = reference.int_weight_linear(x.float(), *layout, group, bits, None, bias.float())
    return want, float(want.abs().max()) + 1.0


@pytest.mark.parametrize(("n", "k", "group", "bits"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_matches_the_reference(n: int, k: int, group: int, bits: int, dtype: torch.dtype,
                                    device: torch.device) -> None:
    layout, bias = _case(n, k, group, bits, dtype, device)
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    want, scale = _want(x, layout, group, bits, bias)
    per = 32 // bits
    # A tile inside one group (8 words), and one holding whole groups (when the group allows).
    for block_w in {8, max(8, 2 * min(group, 64) // per)}:
        for split_k, planes in ((1, False), (3, False), (3, True)):  # planes: x through x_planes first
            got = int_weight_gemv(x, *layout, group, bits, bias, block_n=16, block_w=block_w, split_k=split_k,
                                  planes=planes)
            assert got.dtype == dtype and got.shape == (1, n)
            assert_close(got / scale, want / scale, dtype, 4)


@pytest.mark.parametrize(("n", "k", "group", "bits"), [s for s in SHAPES if s[3] == 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_packed_pair_gemv_matches_the_reference(n: int, k: int, group: int, bits: int, dtype: torch.dtype,
                                                device: torch.device) -> None:
    # x spans the range a layer sees: a chunk of zeros, one of tiny values, one far above the
    # products float16 could hold unscaled (each chunk gets its own power of two).
    layout, bias = _case(n, k, group, bits, dtype, device)
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(2)) + 0.3
    x[0, :16] = 0.0
    x[0, 16:32] *= 1e-4
    x[0, 32:48] *= 3000.0
    x = x.to(device, dtype)
    want, scale = _want(x, layout, group, bits, bias)
    # fused: x's pairs made in the kernel instead of by x_pairs; ahead: the next tile loaded first.
    whole = 2 * min(group, 64) // 8  # a tile holding whole groups where the group allows
    for block_w, split_k, fold, fused, ahead in ((8, 1, True, False, False), (8, 3, False, False, False),
                                                 (whole, 3, True, False, False), (8, 1, True, True, False),
                                                 (8, 3, False, True, True), (whole, 1, True, True, True),
                                                 (whole, 3, True, False, True)):
        got = int_weight_gemv_f16x2(x, *layout, group, bits, bias, block_n=16, block_w=block_w, split_k=split_k,
                                    fold=fold, fused=fused, ahead=ahead)
        assert got.dtype == dtype and got.shape == (1, n)
        assert_close(got / scale, want / scale, dtype, 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pairs_made_in_the_kernel_give_the_x_pairs_result_exactly(dtype: torch.dtype, device: torch.device) -> None:
    # The same float16 planes either way (chunk_pairs is shared), so the same sums in the same
    # order: any difference is a wrong plane, factor or chunk sum in the kernel's own pairs. A row
    # of x offset by one value (not 16-byte aligned) is copied first, as the launcher promises.
    n, k, group = 24, 256, 64
    layout = _layout(n, k, group, 4, device)
    x = (torch.randn(1, k + 1, generator=torch.Generator().manual_seed(4)) * 5.0).to(device, dtype)
    x[0, 1:17] *= 1e-3
    for row in (x[:, :k].contiguous(), x[:, 1:]):
        for block_w, split_k, fold, ahead in ((8, 1, True, False), (16, 2, False, True), (32, 1, True, True)):
            kw = dict(block_n=8, block_w=block_w, split_k=split_k, fold=fold)
            want = int_weight_gemv_f16x2(row, *layout, group, 4, **kw)
            got = int_weight_gemv_f16x2(row, *layout, group, 4, fused=True, ahead=ahead, **kw)
            assert torch.equal(got, want), (block_w, split_k, fold, ahead)


@pytest.mark.parametrize(("n", "k", "group", "bits"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemm_and_dequant_match_the_reference(n: int, k: int, group: int, bits: int, dtype: torch.dtype,
                                              device: torch.device) -> None:
    layout, bias = _case(n, k, group, bits, dtype, device)
    gen = torch.Generator().manual_seed(1)
    dense = reference.dequantize_int_weight(*layout, group, bits)  # (N, K)
    assert_close(int_weight_dequant(*layout, group, bits, dtype, block_n=16, block_w=8), dense, dtype)
    for rows in (1, 17):
        x = torch.randn(rows, k, generator=gen).to(device, dtype)
        want, scale = _want(x, layout, group, bits, bias)
        # 32 channels: inside a group (the zero point and scale fold into the product); 64 / 128
        # with group 32: the tile holds whole groups and is dequantized per word. ptx: the PTX
        # unpack where it applies (4 bits, bf16, on a GPU; with 64 outputs a tile, so every thread
        # holds the two words an instance takes), else the same plain unpack.
        # into: the zero point (and the scale) applied to the weight tile instead of the product.
        for block_k, split_k, swap, ptx, into in ((32, 1, False, False, "acc"), (32, 2, True, True, "acc"),
                                                  (128 if group == 32 else 64, 2, False, True, "acc"),
                                                  (32, 1, False, False, "zero"), (32, 2, True, True, "zero"),
                                                  (32, 1, True, False, "tile"), (32, 2, False, True, "tile")):
            got = int_weight_gemm(x, *layout, group, bits, bias, block_m=16, block_n=64 if ptx else 16,
                                  block_k=block_k, split_k=split_k, swap=swap, ptx=ptx, into=into)
            assert got.dtype == dtype and got.shape == (rows, n)
            assert_close(got / scale, want / scale, dtype, 4)


def test_an_unknown_into_is_refused(device: torch.device) -> None:
    layout = _layout(16, 64, 32, 4, device)
    with pytest.raises(AssertionError, match="into is one of acc, zero, tile"):
        int_weight_gemm(torch.zeros(1, 64, device=device), *layout, 32, 4, block_k=32, into="weights")


def test_a_tile_that_cuts_groups_is_refused(device: torch.device) -> None:
    layout = _layout(8, 192, 96, 4, device)
    with pytest.raises(AssertionError, match="cuts groups"):
        int_weight_gemm(torch.zeros(1, 192, device=device), *layout, 96, 4, block_k=64)
    with pytest.raises(AssertionError, match="cuts groups"):
        int_weight_gemv(torch.zeros(1, 192, device=device), *layout, 96, 4, block_w=8)


@pytest.mark.gpu
def test_split_k_configs_of_the_shortlist_stay_right_over_repeated_launches() -> None:
    # The partials of a split tile meet in one launch (genfleet_kernels/split_k.py): every launch must give
    # the same right answer, eagerly and replayed from a CUDA graph, on the 8B down_proj shape.
    from worker.quant.int_kernels import F16X2, GEMM, GEMV

    device = torch.device("cuda")
    n, k, group, bits = 4096, 14336, 128, 4
    layout = _layout(n, k, group, bits, device)
    gen = torch.Generator().manual_seed(3)
    for rows in (1, 16, 64):
        x = torch.randn(rows, k, generator=gen).to(device, torch.bfloat16)
        want = reference.int_weight_linear(x.float(), *layout, group, bits)
        launches = [lambda c=c: int_weight_gemm(x, *layout, group, bits, block_m=c[0], block_n=c[1], block_k=c[2],
                                                 split_k=c[3], swap=c[4], ptx=c[5], num_warps=c[6], num_stages=c[7],
                                                 into=c[8] if len(c) > 8 else "acc")
                    for c in GEMM if c[3] > 1 and c[0] <= max(16, rows)]
        if rows == 1:
            launches += [lambda c=c: int_weight_gemv(x, *layout, group, bits, block_n=c[0], block_w=c[1], split_k=c[2],
                                                     num_warps=c[3], num_stages=c[4], wide=c[5] is True,
                                                     planes=c[5] == "planes")
                         for c in GEMV if c[2] > 1]
            launches += [lambda c=c: int_weight_gemv_f16x2(x, *layout, group, bits, block_n=c[0], block_w=c[1],
                                                           split_k=c[2], num_warps=c[3], num_stages=c[4], fold=c[5],
                                                           fused=c[6] if len(c) > 6 else False,
                                                           ahead=c[7] if len(c) > 7 else False)
                         for c in F16X2 if c[2] > 1]
        for launch in launches:
            outs = [launch() for _ in range(20)]
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                replayed = launch()
            for _ in range(10):
                graph.replay()
                outs.append(replayed.clone())
            for got in outs:
                assert float((got.float() - want).norm() / want.norm()) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU or torch.cuda.get_device_capability() < (9, 0), reason="needs an sm_90+ GPU")
def test_a_chain_of_int4_gemvs_gives_the_same_bits_with_and_without_pdl() -> None:
    # norm -> gate_up -> activation -> down, many times over, each GEMV build of the shortlist that
    # loads weights before the grid dependency wait (ahead) or makes x's pairs itself (fused):
    # with PDL on, a GEMV that read x before its producer finished would differ.
    from genfleet_kernels import pdl
    from genfleet_kernels.rms_norm import rms_norm
    from genfleet_kernels.silu_and_mul import silu_and_mul
    from worker.quant.int_kernels import F16X2

    device = torch.device("cuda")
    hidden, inter, group = 1024, 2816, 128
    layers = [(torch.rand(hidden, device=device).bfloat16() + 0.5, _layout(2 * inter, hidden, group, 4, device, i),
               _layout(hidden, inter, group, 4, device, 100 + i)) for i in range(12)]
    x = torch.randn(1, hidden, generator=torch.Generator().manual_seed(5)).to(device, torch.bfloat16)
    for c in {c for c in F16X2 if len(c) > 6}:
        def run(c=c):  # type: ignore[no-untyped-def]
            kw = dict(block_n=c[0], block_w=c[1], split_k=c[2], num_warps=c[3], num_stages=c[4], fold=c[5],
                      fused=c[6], ahead=c[7])
            hidden_x, residual = x, torch.zeros_like(x)
            for norm, up, down in layers:
                normed, residual = rms_norm(hidden_x, norm, 1e-5, residual)
                hidden_x = int_weight_gemv_f16x2(silu_and_mul(int_weight_gemv_f16x2(normed, *up, group, 4, **kw)),
                                                 *down, group, 4, **kw)
            return hidden_x + residual

        results = {}
        try:
            for on in (False, True):
                assert pdl.enable(on, device) is on
                eager = run()
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    replayed = run()
                graph.replay()
                torch.cuda.synchronize()
                assert torch.equal(replayed, eager), c
                results[on] = eager
        finally:
            pdl.enable(False)
        assert torch.equal(results[True], results[False]), c
